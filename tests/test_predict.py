"""birefnet predict (masks, cutouts, composites at full resolution) and ONNX export."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from birefnet.data import DISDataset
from birefnet.data.io import png_source
from birefnet.data.transforms import eval_transform
from birefnet.export import export_onnx
from birefnet.losses import DISLoss
from birefnet.models import BiRefNet, save_model
from birefnet.predict import Predictor, collect_inputs
from tests.conftest import ROOT, SAMPLE


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny BiRefNet trained for a few steps on sample images (64 px)."""
    torch.manual_seed(0)
    model = BiRefNet("pvt_v2_b0", decoder_attention="")
    ds = DISDataset(SAMPLE, "ECSSD-TR", eval_transform((64, 64)))
    images = torch.stack([ds[i]["image"] for i in range(8)])
    masks = torch.stack([ds[i]["mask"] for i in range(8)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = DISLoss()
    for _ in range(5):
        loss, _ = loss_fn(model.train()(images), masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_model(model.eval(), path)
    return path


def _inputs(tmp_path, names=("0005", "0010", "0015")):
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    for n in names:
        shutil.copy(SAMPLE / "ECSSD-TE" / "im" / f"{n}.jpg", folder)
    return folder


def test_masks_and_cutouts_at_original_size(tiny_checkpoint, tmp_path):
    folder = _inputs(tmp_path)
    predictor = Predictor(tiny_checkpoint, size=(64, 64))
    summary = predictor.run(
        collect_inputs([str(folder)]),
        tmp_path / "out",
        ["mask", "cutout", "composite"],
        background="0,255,0",
        progress=False,
    )
    assert summary.written == 3 and not summary.skipped
    for src in sorted(folder.iterdir()):
        original = np.asarray(Image.open(src))
        mask = np.asarray(Image.open(tmp_path / "out" / f"{src.stem}.png"))
        cutout = np.asarray(Image.open(tmp_path / "out" / f"{src.stem}_cutout.png"))
        composite = np.asarray(Image.open(tmp_path / "out" / f"{src.stem}_composite.png"))
        assert mask.shape == original.shape[:2] and mask.dtype == np.uint8
        assert cutout.shape == (*original.shape[:2], 4) and composite.shape == original.shape
        assert np.array_equal(cutout[..., 3], mask)  # alpha is the mask
        assert mask.std() > 0  # a real, non-constant prediction


def test_cutout_rgb_equals_input_where_alpha_is_255(tmp_path):
    torch.manual_seed(0)
    model = BiRefNet("pvt_v2_b0", decoder_attention="").eval()
    with torch.no_grad():
        model.decoder.conv_out1[0].bias.fill_(60.0)  # sigmoid saturates to exactly 1 on most pixels
    folder = _inputs(tmp_path, ["0005"])
    Predictor(None, size=(64, 64), model=model).run(
        collect_inputs([str(folder)]), tmp_path / "out", ["cutout"], progress=False
    )
    original = np.asarray(Image.open(folder / "0005.jpg").convert("RGB"))
    cutout = np.asarray(Image.open(tmp_path / "out" / "0005_cutout.png"))
    full = cutout[..., 3] == 255
    assert full.mean() > 0.5
    assert np.array_equal(cutout[..., :3][full], original[full])


def test_grayscale_input(tiny_checkpoint, tmp_path):
    Image.open(SAMPLE / "ECSSD-TE" / "im" / "0005.jpg").convert("L").save(tmp_path / "gray.png")
    Predictor(tiny_checkpoint, size=(64, 64)).run(
        [(tmp_path / "gray.png", tmp_path / "gray.png")], tmp_path / "out", ["mask", "cutout"], progress=False
    )
    gray = np.asarray(Image.open(tmp_path / "gray.png"))
    assert np.asarray(Image.open(tmp_path / "out" / "gray.png")).shape == gray.shape
    assert np.asarray(Image.open(tmp_path / "out" / "gray_cutout.png")).shape == (*gray.shape, 4)


def test_rgba_input(tiny_checkpoint, tmp_path):
    rgb = Image.open(SAMPLE / "ECSSD-TE" / "im" / "0010.jpg").convert("RGB")
    rgba = rgb.copy()
    rgba.putalpha(128)
    rgba.save(tmp_path / "rgba.png")
    Predictor(tiny_checkpoint, size=(64, 64)).run(
        [(tmp_path / "rgba.png", tmp_path / "rgba.png")], tmp_path / "out", ["mask"], progress=False
    )
    assert np.asarray(Image.open(tmp_path / "out" / "rgba.png")).shape == (rgb.height, rgb.width)


def test_exif_rotated_input_gets_the_displayed_size(tiny_checkpoint, tmp_path):
    img = Image.open(SAMPLE / "ECSSD-TE" / "im" / "0015.jpg").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees
    img.save(tmp_path / "rot.jpg", exif=exif)
    Predictor(tiny_checkpoint, size=(64, 64)).run(
        [(tmp_path / "rot.jpg", tmp_path / "rot.jpg")], tmp_path / "out", ["mask"], progress=False
    )
    assert np.asarray(Image.open(tmp_path / "out" / "rot.png")).shape == (img.width, img.height)


def test_corrupt_input_is_skipped_and_reported(tiny_checkpoint, tmp_path):
    folder = _inputs(tmp_path, ["0005"])
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    summary = Predictor(tiny_checkpoint, size=(64, 64)).run(
        collect_inputs([str(folder)]), tmp_path / "out", ["mask"], progress=False
    )
    assert summary.written == 1 and [p.name for p, _ in summary.skipped] == ["broken.jpg"]
    assert "1 unreadable, skipped" in summary.line()


def test_existing_outputs_are_kept_without_overwrite(tiny_checkpoint, tmp_path):
    folder = _inputs(tmp_path, ["0005"])
    out = tmp_path / "out"
    predictor = Predictor(tiny_checkpoint, size=(64, 64))
    first = predictor.run(collect_inputs([str(folder)]), out, ["mask"], progress=False)
    assert first.written == 1
    stamp = (out / "0005.png").stat().st_mtime_ns
    again = predictor.run(collect_inputs([str(folder)]), out, ["mask"], progress=False)
    assert again.written == 0 and len(again.existing) == 1 and (out / "0005.png").stat().st_mtime_ns == stamp
    redo = predictor.run(collect_inputs([str(folder)]), out, ["mask"], overwrite=True, progress=False)
    assert redo.written == 1 and png_source(out / "0005.png") == "0005.jpg"


def test_cli_predict_recursive_glob_and_original_size(tiny_checkpoint, tmp_path):
    folder = _inputs(tmp_path)
    (folder / "sub").mkdir()
    shutil.copy(SAMPLE / "ECSSD-TE" / "im" / "0020.jpg", folder / "sub")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "birefnet.predict",
            str(folder),
            "--recursive",
            "--checkpoint",
            str(tiny_checkpoint),
            "--output",
            str(tmp_path / "out"),
            "--size",
            "original",
            "--refine-foreground",
            "--outputs",
            "mask,cutout",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "sub" / "0020.png").is_file()
    assert "4 image(s) in" in proc.stderr and "images/s" in proc.stderr


@pytest.mark.parametrize("deform_op", ["DeformConv", "GridSample"])
def test_onnx_export_matches_pytorch(tmp_path, deform_op):
    torch.manual_seed(0)
    model = BiRefNet("pvt_v2_b0").eval()  # with the deformable ASPP (ONNX DeformConv, opset 19)
    for m in model.modules():
        if type(m).__name__ == "DeformableConv2d":  # make the deformation non-trivial
            torch.nn.init.normal_(m.offset_conv.weight, std=0.05)
    diff = export_onnx(model, tmp_path / "m.onnx", size=(64, 64), deform_op=deform_op)
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert ("DeformConv" in ops) == (deform_op == "DeformConv")
    assert ("GridSample" in ops) == (deform_op == "GridSample")
    assert diff is not None and diff <= 1e-3
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 96, 64)  # another size: height and width are dynamic
    with torch.no_grad():
        assert np.abs(session.run(None, {"image": x.numpy()})[0] - model(x).logits.numpy()).max() <= 1e-3


def test_cli_export_onnx(tiny_checkpoint, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "birefnet.cli",
            "export-onnx",
            "--checkpoint",
            str(tiny_checkpoint),
            "--output",
            str(tmp_path / "t.onnx"),
            "--size",
            "64",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "onnxruntime vs PyTorch max abs diff" in proc.stdout


def test_compiled_predictor_gives_the_same_masks(tiny_checkpoint):
    image = np.asarray(Image.open(SAMPLE / "ECSSD-TE" / "im" / "0005.jpg").convert("RGB"))
    eager = Predictor(tiny_checkpoint, size=(64, 64), backend="torch", precision="fp32").masks([image])[0]
    compiled = Predictor(tiny_checkpoint, size=(64, 64), compile={"backend": "eager"}).masks([image])[0]
    assert np.allclose(eager, compiled, atol=1e-6)


def test_swin_onnx_export_pads_windows_like_pytorch(tmp_path):
    """A Swin backbone whose token maps are not multiples of the window (16 -> 21 at 64 px with window 7, and the
    half-scale pass) exports and runs in onnxruntime: the padded size is computed without a negative integer
    division, which ONNX truncates."""
    torch.manual_seed(0)
    tiny_swin = {"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (1, 1, 2, 2), "window_size": 7}
    model = BiRefNet("swin_v1_t", backbone_kwargs=tiny_swin, decoder_attention="").eval()
    diff = export_onnx(model, tmp_path / "m.onnx", size=(64, 64), dynamic_size=False)
    assert diff is not None and diff <= 1e-3


def test_backend_choice_follows_device_precision_and_what_is_installed(monkeypatch):
    from birefnet import backends
    from birefnet.errors import UserError

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert backends.choose_backend("auto", cpu)[0] == "onnxruntime"  # installed with the dev extra
    assert backends.choose_backend("auto", cuda)[0] == "torch"
    assert backends.choose_backend("torch", cpu)[0] == "torch"
    backend, why = backends.choose_backend("auto", cpu, parameters=220_000_000)  # Swin-V1-L: the lower memory
    assert backend == "torch" and "220 M parameters" in why
    assert backends.choose_backend("onnxruntime", cpu, parameters=220_000_000)[0] == "onnxruntime"
    with pytest.raises(UserError, match="CPU"):
        backends.choose_backend("onnxruntime", cuda)
    # precision "auto": bf16 in PyTorch on a CPU with native bf16, for a model loaded from a checkpoint
    monkeypatch.setattr(backends, "native_bf16", lambda: True)
    assert backends.choose_path("auto", "auto", cpu)[:2] == ("torch", "bf16")
    assert backends.choose_path("auto", "auto", cpu, parameters=220_000_000)[:2] == ("torch", "bf16")
    assert backends.choose_path("onnxruntime", "auto", cpu)[:2] == ("onnxruntime", "fp32")
    assert backends.choose_path("auto", "auto", cpu, compiled=True)[:2] == ("torch", "fp32")
    assert backends.choose_path("auto", "auto", cpu, loaded=False)[:2] == ("torch", "fp32")  # not cast: not ours
    assert backends.choose_path("auto", "auto", cuda)[:2] == ("torch", "fp16")
    assert backends.choose_path("auto", "fp32", cpu)[:2] == ("onnxruntime", "fp32")
    with pytest.raises(UserError, match="fp32 graph"):
        backends.choose_path("onnxruntime", "bf16", cpu)
    monkeypatch.setattr(backends, "native_bf16", lambda: False)  # emulated bf16 is slow: the fastest fp32 path
    assert backends.choose_path("auto", "auto", cpu)[:2] == ("onnxruntime", "fp32")
    monkeypatch.setattr(backends, "onnxruntime_available", lambda: False)
    backend, why = backends.choose_backend("auto", cpu)
    assert backend == "torch" and "birefnet[onnx]" in why
    with pytest.raises(UserError, match="birefnet\\[onnx\\]"):
        backends.choose_backend("onnxruntime", cpu)


def test_onnxruntime_backend_equals_eager_masks_and_caches_its_graph(tmp_path, caplog):
    """The default CPU backend: masks within 1/255 of eager fp32 on >= 99.9 % of pixels (deformable decoder
    attention included), the graph exported once into the project's cache and rebuilt when the checkpoint changes;
    the user's own ONNX files next to the checkpoint or in the cache are never touched."""
    from birefnet.backends import graph_cache_folder

    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    save_model(BiRefNet("pvt_v2_b0").eval(), path)  # with the deformable ASPP (ONNX DeformConv)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((SAMPLE / "ECSSD-TE" / "im").glob("*.jpg"))]
    eager = Predictor(path, size=(64, 64), backend="torch", precision="fp32")
    with caplog.at_level("INFO", logger="birefnet"):
        fast = Predictor(path, size=(64, 64), precision="fp32")
    assert fast.backend == "onnxruntime" and not fast.logits.cached and "Backend: onnxruntime, fp32" in caplog.text
    close = [np.abs(a - b) <= 1 / 255 for a, b in zip(eager.masks(images), fast.masks(images), strict=True)]
    assert np.concatenate([c.ravel() for c in close]).mean() >= 0.999
    cache = graph_cache_folder()
    graphs = sorted(p.name for p in cache.glob("m-*.onnx"))
    assert len(graphs) == 1 and fast.logits.path == cache / graphs[0]
    assert not list(tmp_path.glob("*.onnx"))  # nothing is written beside the user's checkpoint
    assert next(fast.model.parameters()).is_meta  # the weights are held once, by onnxruntime
    # the user's files whose names look like graphs of this checkpoint, beside it and in the cache
    users = [tmp_path / "m.fp32.onnx", tmp_path / "m.v2.onnx", cache / "m.fp32.onnx", cache / "m-0123456789abcdef.onnx"]
    for f in users:
        f.write_bytes(b"the user's own graph")

    assert Predictor(path, size=(64, 64), precision="fp32").logits.cached  # the second run loads the graph
    torch.manual_seed(1)
    save_model(BiRefNet("pvt_v2_b0").eval(), path)  # new weights, same file name
    rebuilt = Predictor(path, size=(64, 64), precision="fp32")
    assert not rebuilt.logits.cached
    assert rebuilt.logits.path.name not in graphs and rebuilt.logits.path.is_file()
    assert not (cache / graphs[0]).exists()  # the stale graph, which the cache's marker proves its own, is gone
    assert all(f.read_bytes() == b"the user's own graph" for f in users)
    again = Predictor(path, size=(64, 64), backend="torch", precision="fp32").masks(images[:1])[0]
    assert np.abs(rebuilt.masks(images[:1])[0] - again).max() <= 1 / 255


def test_bf16_on_cpu_runs_the_folded_network_cast_to_bf16(tmp_path, caplog):
    """--precision bf16 on a CPU: BatchNorm folded, every weight in bf16 (the deformable convolutions too), and
    masks within 1/255 of fp32's on >= 99.9 % of pixels."""
    from birefnet.bench import mask_agreement
    from birefnet.models.blocks import DeformableConv2d

    torch.manual_seed(0)
    model = BiRefNet("pvt_v2_b0")
    for m in model.modules():
        if isinstance(m, DeformableConv2d):  # fractional sample positions
            torch.nn.init.normal_(m.offset_conv.weight, std=0.05)
    path = tmp_path / "m.safetensors"
    save_model(model.eval(), path)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((SAMPLE / "ECSSD-TE" / "im").glob("*.jpg"))]
    fp32 = Predictor(path, size=(64, 64), backend="torch", precision="fp32")
    with caplog.at_level("INFO", logger="birefnet"):
        bf16 = Predictor(path, size=(64, 64), precision="bf16")
    assert bf16.backend == "torch" and bf16.cast == torch.bfloat16 and "BatchNorms folded" in caplog.text
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bf16.model.modules())
    agreement = mask_agreement(fp32.masks(images), bf16.masks(images), "fp32")
    assert agreement["% px within 1/255 of fp32"] >= 99.9


def test_a_failed_export_leaves_no_graph_behind(tmp_path, monkeypatch):
    from birefnet import export
    from birefnet.backends import OnnxRuntimeRunner, graph_cache_folder

    def broken(model, output, *args, **kwargs):
        with open(output, "wb") as f:
            f.write(b"half a graph")
        raise RuntimeError("ONNX export failed: interrupted")

    monkeypatch.setattr(export, "_export", broken)
    path = tmp_path / "m.safetensors"
    save_model(BiRefNet("pvt_v2_b0", decoder_attention=""), path)
    before = sorted(graph_cache_folder().glob("*")) if graph_cache_folder().is_dir() else []
    with pytest.raises(RuntimeError, match="interrupted"):
        OnnxRuntimeRunner(BiRefNet("pvt_v2_b0", decoder_attention=""), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert sorted(graph_cache_folder().glob("*")) == before  # no graph, no partial file
