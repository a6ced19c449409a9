"""Inference paths of :class:`birefnet.predict.Predictor`: eager PyTorch (fp32, or the network cast to bf16), or the
model's ONNX graph in onnxruntime.

On a CPU with native bf16 (AVX-512 BF16 or AMX), the network cast to bf16 with its BatchNorms folded is the
fastest path measured, and its masks stay within 1/255 of fp32 on >= 99.9 % of pixels (``docs/benchmarks.md``:
BiRefNet Swin-V1-T at 512 px on ECSSD-TE, 1.9x faster than eager fp32), so ``precision="auto"`` takes it there.
In fp32, onnxruntime runs the exported graph faster than eager PyTorch for every model measured (U2-Net 1.35x,
BiRefNet 1.03-1.1x), so ``backend="auto"`` picks it when onnxruntime is installed (the ``onnx`` extra). For models
above :data:`LARGE_MODEL_PARAMETERS` it keeps PyTorch: onnxruntime's memory arena holds far more (BiRefNet
Swin-V1-L at 1024 px: 6.9 GB peak with the export against 3.1 GB), and the speed is one flag away. PyTorch also
runs on GPUs.

The graph is exported once per checkpoint and cached in this project's own folder, ``$BIREFNET_CACHE/onnx`` (default
``$XDG_CACHE_HOME/birefnet/onnx``, ``~/.cache/birefnet/onnx``), never beside the user's files. Its name carries a digest
of the checkpoint's bytes, so a changed checkpoint gets a new graph. Each graph has a marker file recording the
checkpoint it was made from, its digest and its size; a stale graph is removed only when its marker says it was made
from the same checkpoint file, its name has the cache's pattern and its size is the recorded one. Nothing else is
ever deleted, whatever its name.
The graph takes any height and width (multiples of 32) and is traced on a small example: tracing at the inference
size costs far more memory (BiRefNet Swin-V1-L at 1024 px: 18.3 GB peak against 6.9 GB, the same graph speed;
``docs/benchmarks.md``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from birefnet.errors import UserError

log = logging.getLogger("birefnet")

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "OnnxRuntimeRunner",
    "choose_backend",
    "choose_path",
    "graph_cache_folder",
    "graph_cache_path",
]

BACKENDS = ("auto", "torch", "onnxruntime")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")

#: ``auto`` keeps PyTorch on a CPU for models with more parameters than this (BiRefNet Swin-V1-L has 220 M).
LARGE_MODEL_PARAMETERS = 100_000_000


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def choose_backend(requested: str, device: torch.device, parameters: int = 0) -> tuple[str, str]:
    """``(backend, reason)`` for a requested backend (one of :data:`BACKENDS`) on ``device`` for a model with
    ``parameters`` parameters."""
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {requested!r}.")
    if requested == "onnxruntime":
        if device.type != "cpu":
            raise UserError(
                f"The onnxruntime backend runs on the CPU; use --device cpu, or the torch backend on {device}."
            )
        if not onnxruntime_available():
            raise UserError("The onnxruntime backend needs onnx and onnxruntime: pip install 'birefnet[onnx]'.")
        return "onnxruntime", "as asked"
    if requested == "torch":
        return "torch", "as asked"
    if device.type != "cpu":
        return "torch", f"the default on {device.type}"
    if not onnxruntime_available():
        return "torch", "onnxruntime is not installed (pip install 'birefnet[onnx]' for faster CPU inference)"
    if parameters > LARGE_MODEL_PARAMETERS:
        return "torch", (
            f"{parameters / 1e6:.0f} M parameters: the lower peak memory on CPU; --backend onnxruntime is about "
            "1.1x faster and holds about twice the memory (docs/benchmarks.md)"
        )
    return "onnxruntime", "the fastest measured on CPU (docs/benchmarks.md)"


def native_bf16() -> bool:
    """The CPU computes bf16 products in hardware (AVX-512 BF16 or AMX); elsewhere bf16 is emulated and slow."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def choose_path(
    backend: str, precision: str, device: torch.device, parameters: int = 0, loaded: bool = True, compiled: bool = False
) -> tuple[str, str, str]:
    """``(backend, precision, reason)`` for what was asked (``backend`` of :data:`BACKENDS`, ``precision`` of
    :data:`PRECISIONS`) on ``device``, for a model of ``parameters`` parameters that the caller ``loaded`` from a
    checkpoint (else a model object it was given) and may ``compile``.

    ``precision="auto"``: fp16 on a GPU; on a CPU with native bf16, the network cast to bf16 in PyTorch (the
    fastest path measured there, masks within 1/255 of fp32 on >= 99.9 % of pixels: docs/benchmarks.md) when the
    backend is not fixed to onnxruntime, the model was loaded here (a given model object is not cast) and it is not
    compiled; otherwise fp32, with the backend chosen by :func:`choose_backend`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}.")
    if precision == "auto":
        if device.type != "cpu":
            precision = "fp16"
        elif backend in ("auto", "torch") and loaded and not compiled and native_bf16():
            reason = "the fastest measured on a CPU with native bf16: the network cast to bf16 (docs/benchmarks.md)"
            return "torch", "bf16", reason
        else:
            precision = "fp32"
    if precision != "fp32" or compiled:
        what = f"{precision}{' with torch.compile' if compiled else ''}"
        if backend == "onnxruntime":
            raise UserError(f"The onnxruntime backend runs the fp32 graph, not {what}: drop --precision / --compile.")
        return "torch", precision, what
    if backend == "auto" and not loaded:
        return "torch", precision, "a model object: no checkpoint file to cache its graph for"
    chosen, reason = choose_backend(backend, device, parameters)
    return chosen, precision, reason


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 23):
            h.update(chunk)
    return h.hexdigest()


def graph_cache_folder() -> Path:
    """Where graphs are cached: ``$BIREFNET_CACHE/onnx``, else ``$XDG_CACHE_HOME/birefnet/onnx`` (``~/.cache``)."""
    if os.environ.get("BIREFNET_CACHE"):
        return Path(os.environ["BIREFNET_CACHE"]) / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "birefnet" / "onnx"


#: The example input the graph is traced on (height, width); the graph itself takes any multiple of 32.
TRACE_SIZE = (256, 256)
#: Names of cached graphs: ``<checkpoint stem>-<16 hex digits of its digest>.onnx``; markers add ``.birefnet.json``.
_GRAPH_NAME = re.compile(r"^.+-[0-9a-f]{16}\.onnx$")
_MARKER_SUFFIX = ".birefnet.json"


def graph_cache_path(checkpoint: Path) -> Path:
    """The cached graph of ``checkpoint`` (see the module)."""
    return graph_cache_folder() / f"{checkpoint.stem}-{_digest(checkpoint)}.onnx"


def _marker(graph: Path) -> Path:
    return graph.with_name(graph.name + _MARKER_SUFFIX)


def _record(graph: Path, checkpoint: Path) -> None:
    """Write the marker that proves ``graph`` is this cache's, made from ``checkpoint``."""
    from birefnet.atomic import atomic_write_text

    entry = {"graph": graph.name, "checkpoint": str(checkpoint.resolve()), "bytes": graph.stat().st_size}
    atomic_write_text(_marker(graph), json.dumps(entry))


def _remove_stale(graph: Path, checkpoint: Path) -> list[Path]:
    """Remove the graphs this cache made from an earlier version of ``checkpoint`` (same file, another digest),
    with their markers; returns what was removed. Files without a matching marker are never touched."""
    removed = []
    source = str(checkpoint.resolve())
    for marker in graph.parent.glob(f"*.onnx{_MARKER_SUFFIX}"):
        try:
            entry = json.loads(marker.read_text(encoding="utf-8"))
            other = graph.parent / str(entry["graph"])
            ours = (
                entry["checkpoint"] == source
                and other != graph
                and other.name + _MARKER_SUFFIX == marker.name
                and _GRAPH_NAME.match(other.name) is not None
                and other.is_file()
                and not other.is_symlink()
                and other.stat().st_size == entry["bytes"]
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if ours:
            with contextlib.suppress(OSError):
                other.unlink()
                marker.unlink()
                removed.append(other)
    return removed


class OnnxRuntimeRunner:
    """``runner(batch) -> logits``: the model's graph in onnxruntime's CPU provider.

    Args:
        model: the network (exported when no cached graph exists; it is changed in place for the export).
        checkpoint: the weights file ``model`` came from; the graph is cached for it (``None``: a temporary
            graph for this runner only).
        threads: onnxruntime's intra-op threads (default: torch's).
        release: once the graph exists, move ``model``'s tensors to the ``meta`` device: the process then holds
            the weights once, in onnxruntime (for a model loaded only to run here).
    """

    def __init__(
        self,
        model: nn.Module,
        checkpoint: Path | None = None,
        threads: int | None = None,
        release: bool = False,
    ) -> None:
        import onnxruntime as ort

        from birefnet.export import export_onnx

        if checkpoint is not None:
            path = graph_cache_path(checkpoint)
        else:
            path = Path(tempfile.mkdtemp(prefix="birefnet-onnx-")) / "model.onnx"
        if path.is_file():
            log.info("onnxruntime: the cached graph %s.", path)
            self.cached = True
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            log.info("onnxruntime: exporting the graph once to %s (later runs load it).", path)
            # written atomically: two first runs exporting at once each finish their own file, one wins
            export_onnx(model, path, TRACE_SIZE, dynamic_size=True, check=False)
            if checkpoint is not None:
                _record(path, checkpoint)
                for stale in _remove_stale(path, checkpoint):
                    log.info("onnxruntime: removed the graph of an earlier version of %s: %s.", checkpoint, stale)
            self.cached = False
        if release:
            model.to("meta")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {"image": batch.float().cpu().numpy()})
        return torch.from_numpy(logits)


def torch_runner(model: nn.Module, compile: dict | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``runner(batch) -> logits`` with eager (or compiled) PyTorch."""
    net = torch.compile(model, **compile) if compile is not None else model
    return lambda batch: net(batch).logits
