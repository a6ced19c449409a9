"""ONNX export: ``birefnet export-onnx --checkpoint FILE --output model.onnx``.

The graph takes a normalised image batch ``image`` (dynamic batch, and dynamic height/width in multiples of
32) and returns ``logits`` (apply a sigmoid for the mask). The modulated deformable convolution of the
default decoder attention is exported as ONNX ``DeformConv`` (opset 19); onnxruntime runs it on CPU. The
export is checked against PyTorch on CPU before the file is kept.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from birefnet.atomic import atomic_path
from birefnet.errors import UserError
from birefnet.models import load_model
from birefnet.models.checkpoint import model_card
from birefnet.models.hub import resolve_weights
from birefnet.models.state_dict import PREPROCESSING_METADATA_KEY

log = logging.getLogger("birefnet")

__all__ = ["add_arguments", "check_output", "export_onnx", "run_from_args", "written_by_export"]

_REGISTERED = False


def _register_deform_conv() -> None:
    """Map ``torchvision::deform_conv2d`` to ONNX DeformConv (opset 19) for the TorchScript exporter."""
    global _REGISTERED
    if _REGISTERED:
        return
    from torch.onnx import symbolic_helper as sh

    @sh.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
    def deform_conv2d(
        g,
        x,
        weight,
        offset,
        mask,
        bias,
        stride_h,
        stride_w,
        pad_h,
        pad_w,
        dil_h,
        dil_w,
        groups,
        offset_groups,
        use_mask,
    ):
        kh, kw = sh._get_tensor_sizes(weight)[-2:]
        inputs = [x, weight, offset, bias] + ([mask] if use_mask else [])
        return g.op(
            "DeformConv",
            *inputs,
            dilations_i=[dil_h, dil_w],
            group_i=groups,
            kernel_shape_i=[kh, kw],
            offset_group_i=offset_groups,
            pads_i=[pad_h, pad_w, pad_h, pad_w],
            strides_i=[stride_h, stride_w],
        )

    torch.onnx.register_custom_op_symbolic("torchvision::deform_conv2d", deform_conv2d, 19)
    _REGISTERED = True


class _LogitsOnly(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image).logits


def export_onnx(
    model: nn.Module,
    output: str | Path,
    size: tuple[int, int] | None = None,
    opset: int = 19,
    dynamic_size: bool = True,
    check: bool = True,
    atol: float = 1e-3,
    deform_op: str = "DeformConv",
) -> float | None:
    """Export ``model`` (eval mode, CPU) and return onnxruntime's max abs difference to PyTorch on a random batch.

    ``size``: the example input ``(height, width)``; ``None`` takes the model's preprocessing card (1024 x 1024
    for a card without a fixed size). The card is stored in the graph's metadata (``birefnet_preprocessing``, JSON)
    so a runtime knows how to prepare the input. ``deform_op``: the deformable convolution as ONNX ``DeformConv``
    (opset 19) or as ``GridSample`` + MatMul (opset 16+, supported by more runtimes, e.g. TensorRT).

    Raises:
        RuntimeError: the export or onnxruntime fails, with what to do about it.
    """
    _register_deform_conv()
    from birefnet.models.blocks import set_deform_impl

    if deform_op not in ("DeformConv", "GridSample"):
        raise ValueError(f"deform_op must be 'DeformConv' or 'GridSample', not {deform_op!r}.")
    model = model.float().cpu().eval()
    deformable = any(type(m).__name__ == "DeformableConv2d" for m in model.modules())
    set_deform_impl(model, "torchvision" if deform_op == "DeformConv" else "grid_sample")
    if deformable and deform_op == "DeformConv" and opset < 19:
        raise RuntimeError(f"The deformable convolution needs ONNX opset >= 19 (DeformConv); got opset {opset}.")
    card = model_card(model)
    size = tuple(size or card.input_size or (1024, 1024))
    with atomic_path(output) as partial:  # the graph appears whole, with its card, or not at all
        _export(model, partial, size, opset, dynamic_size, deformable)
        _store_card(partial, card)
    if not check:
        return None
    return _check_onnxruntime(model, output, size, deformable, atol)


def _export(model: nn.Module, output: Path, size: tuple[int, int], opset: int, dynamic_size: bool, deformable: bool):
    x = torch.randn(1, 3, *size)
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    try:
        # the wrapper must be in eval mode too: the exporter restores the wrapper's mode on every submodule.
        # The tracer warns about the input checks (constant in the graph; callers pass checked sizes) and about
        # itself being the legacy exporter (the DeformConv symbolic above is written for it): noise for the user.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                _LogitsOnly(model).eval(),
                (x,),
                str(output),
                opset_version=opset,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": axes, "logits": axes},
                dynamo=False,
            )
    except Exception as err:
        hint = (
            " The deformable decoder attention is the usual blocker; for deployment, train or fine-tune the "
            "non-deformable variant (model.net.decoder_attention=ASPP) and export that."
            if deformable
            else ""
        )
        raise RuntimeError(f"ONNX export failed: {type(err).__name__}: {str(err).splitlines()[0]}.{hint}") from err


def _check_onnxruntime(model: nn.Module, output: Path, size: tuple[int, int], deformable: bool, atol: float) -> float:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        batch = torch.randn(2, 3, *size)
        got = session.run(None, {"image": batch.numpy()})[0]
    except Exception as err:
        hint = (
            " onnxruntime could not run DeformConv here: use an onnxruntime with DeformConv support (1.20+), or "
            "deploy the non-deformable variant (model.net.decoder_attention=ASPP)."
            if deformable
            else ""
        )
        raise RuntimeError(f"onnxruntime failed on {output}: {str(err).splitlines()[0]}.{hint}") from err
    with torch.no_grad():
        ref = model(batch).logits.numpy()
    diff = float(np.abs(got - ref).max())
    if diff > atol:
        raise RuntimeError(f"onnxruntime differs from PyTorch by {diff:.2e} (> {atol}) on {output}.")
    return diff


def _store_card(output: str | Path, card) -> None:
    """Put the preprocessing card into the ONNX file's metadata (when the ``onnx`` package is installed)."""
    try:
        import onnx
    except ImportError:
        return
    graph = onnx.load(str(output))
    entry = graph.metadata_props.add()
    entry.key, entry.value = PREPROCESSING_METADATA_KEY, json.dumps(card.to_dict())
    onnx.save(graph, str(output))


def written_by_export(path: str | Path) -> bool:
    """Whether ``path`` is an ONNX graph this tool wrote (its metadata holds the preprocessing card)."""
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return any(entry.key == PREPROCESSING_METADATA_KEY for entry in graph.metadata_props)


def check_output(output: str | Path, checkpoint: Path) -> Path:
    """The ``--output`` of ``export-onnx``, refused before the model loads when it is not a ``.onnx`` name, when it
    is the checkpoint itself, or when it names an existing file that is not a graph this tool wrote."""
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise UserError(f"--output {output}: export-onnx writes an ONNX graph; give the file a .onnx name.")
    if output.exists() or output.is_symlink():
        if output.resolve() == checkpoint.resolve():
            raise UserError(f"--output {output} is the checkpoint being exported; choose another file name.")
        if not output.is_file() or output.is_symlink() or not written_by_export(output):
            raise UserError(
                f"--output {output} exists and is not a graph written by birefnet export-onnx; it was left as it is. "
                "Choose another file name, or delete it first if it is yours to replace."
            )
    return output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a weights file, a folder or a Hugging Face repo")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument(
        "--size", default=None, help="example input size: 1024 or 1024x768 (HxW); default: the model's card"
    )
    parser.add_argument("--opset", type=int, default=19)
    parser.add_argument("--static-size", action="store_true", help="fix height/width (batch stays dynamic)")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument(
        "--deform-op",
        default="DeformConv",
        choices=["DeformConv", "GridSample"],
        help="ONNX form of the deformable convolution",
    )


def run_from_args(args: argparse.Namespace) -> int:
    size = None
    if args.size:
        parts = [int(v) for v in args.size.lower().replace("x", ",").split(",")]
        size = (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    output = check_output(args.output, resolve_weights(args.checkpoint).path)
    model = load_model(args.checkpoint)
    try:
        diff = export_onnx(
            model, output, size, args.opset, not args.static_size, not args.no_check, deform_op=args.deform_op
        )
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    checked = f"; onnxruntime vs PyTorch max abs diff {diff:.2e}" if diff is not None else ""
    print(f"wrote {args.output} (opset {args.opset}, dynamic batch{'' if args.static_size else ' and size'}){checked}")
    return 0
