"""Benchmarks: ``birefnet bench {model,metrics,data,memory} [options]``.

* ``model`` (default): training step (forward, full loss incl. the gradient-reference term, backward, AdamW
  step) and inference of BiRefNet and U2-Net on random data; CUDA events after warm-up on a GPU, wall clock on
  CPU. With no arguments on a CPU-only machine it runs a tiny configuration in well under a minute.
* ``metrics``: the DIS metric suite per 1024x1024 image against PySODMetrics (run in another interpreter
  given by ``--reference-python``, since it pins an older numpy), both timed in one run with the ratio, and
  ``DISMetrics.update`` on uint8 maps and on float probabilities (what validation passes).
* ``data``: training-pipeline samples/s per CPU core at 1024x1024 from 2048x1536 JPEG sources (synthetic, or
  the images of ``--source``).
* ``memory``: activation bytes the training forward keeps for backward, counted on the ``meta`` device.

Every command prints a table and writes JSON (``--json``) with the machine named.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "add_arguments",
    "bench_activation_memory",
    "bench_data",
    "bench_metrics",
    "bench_model",
    "machine",
    "run_from_args",
]


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} logical cores)"


def _print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key, justify="left" if isinstance(rows[0][key], str) else "right")
    for row in rows:
        table.add_row(*(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()))
    Console(width=160).print(table)


# -- model ---------------------------------------------------------------------------------------------------
class _Timer:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def time(self, fn, warmup: int, iters: int) -> list[float]:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1000)
        return times


def _forward_flops(net: torch.nn.Module, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x[:1])
    return counter.get_total_flops() * x.shape[0]


def bench_model(
    model: str = "birefnet",
    backbone: str | None = None,
    size: int | None = None,
    batch: int | None = None,
    precision: str = "bf16",
    compile: bool = False,
    modes: tuple[str, ...] = ("train", "infer"),
    warmup: int = 2,
    iters: int | None = None,
    decoder_attention: str = "ASPPDeformable",
    channels_last: bool = False,
    grad_checkpointing: bool = False,
    deform_impl: str = "auto",
    backend: str = "torch",
    profile: bool = False,
    cast: bool = False,
    int8: bool = False,
) -> list[dict]:
    """Time the training step and/or inference of one configuration; returns table rows.

    ``cast=True`` (inference only) runs the network itself in ``precision`` with its BatchNorms folded, as
    ``Predictor`` runs bf16 on a CPU, instead of fp32 weights under autocast. ``int8=True`` (onnxruntime only)
    quantises the graph's MatMul and Gemm weights to int8 with onnxruntime's dynamic quantisation.

    ``profile=True`` prints ``torch.profiler``'s operator table of one more inference (torch backend), then the
    same by input shape.
    ``backend="onnxruntime"`` times inference of the exported graph (fp32, fixed size) in onnxruntime's CPU
    provider with as many threads as torch uses. ``peak RSS GB`` is the process's peak resident memory so far:
    run one configuration per command to read it per backend.

    ``backbone``, ``size``, ``batch`` and ``iters`` default to the paper model on a GPU (Swin-V1-L, 1024, 4, 10)
    and to a tiny configuration on a CPU (PVT-v2-b0, 256, 2, 3)."""
    from birefnet.losses import DISLoss, MultiBCELoss
    from birefnet.models import BiRefNet, U2Net

    if backend not in ("torch", "onnxruntime"):
        raise ValueError(f"backend must be 'torch' or 'onnxruntime', not {backend!r}.")
    if int8 and backend != "onnxruntime":
        raise ValueError("--int8 quantises the onnxruntime graph: pass --backend onnxruntime.")
    if (backend == "onnxruntime" or cast) and tuple(modes) != ("infer",):
        raise ValueError("the onnxruntime backend and --cast run inference only: pass --modes infer.")
    device = torch.device("cuda" if torch.cuda.is_available() and backend == "torch" else "cpu")
    defaults = ("swin_v1_l", 1024, 4, 10) if device.type == "cuda" else ("pvt_v2_b0", 256, 2, 3)
    backbone, size, batch, iters = (v if v is not None else d for v, d in zip((backbone, size, batch, iters), defaults))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    if model == "birefnet":
        net = BiRefNet(
            backbone,
            decoder_attention=decoder_attention,
            grad_checkpointing=grad_checkpointing,
            deform_impl=deform_impl,
        )
        loss_fn = DISLoss()
        name = f"BiRefNet {backbone}" + (f" (deform: {deform_impl})" if decoder_attention == "ASPPDeformable" else "")
    else:
        net = U2Net(model)
        loss_fn = MultiBCELoss()
        name = {"u2net": "U2-Net", "u2netp": "U2-Netp"}[model]
    net = net.to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=memory_format)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    timer = _Timer(device)
    rows = []
    params = sum(p.numel() for p in net.parameters()) / 1e6
    flops = _forward_flops(net.eval(), x)
    runner = torch.compile(net) if compile else net

    def row(mode: str, fn, flop_factor: int) -> dict:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ms = statistics.median(timer.time(fn, warmup, iters))
        peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else float("nan")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux
        return {
            "model": name,
            "backend": backend,
            "mode": mode,
            "precision": ("int8 MatMul" if int8 else "fp32") if backend == "onnxruntime" else precision,
            "compile": compile,
            "cast": cast,
            "size": size,
            "batch": batch,
            "ms": ms,
            "images/s": batch / ms * 1000,
            "GFLOP / image": flop_factor * flops / batch / 1e9,
            "TFLOP/s": flop_factor * flops / ms / 1e9,
            "peak GB": peak,
            "peak RSS GB": rss,
            "params M": params,
        }

    autocast = precision != "fp32"
    if "train" in modes:
        net.train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-2)

        def step() -> None:
            with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                out = runner(x)
            loss, _ = loss_fn(out, y)  # losses run in fp32, as the reference training
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        rows.append(row("train", step, 3))  # backward ~ 2x forward
    if "infer" in modes and backend == "onnxruntime":
        rows.append(row("infer", _onnxruntime_runner(net.eval(), x, int8), 1))
    elif "infer" in modes:
        net.eval()
        if cast:
            from birefnet.models.fusion import cast_for_inference

            cast_for_inference(net, dtype)
            x, autocast = x.to(dtype), False

        def infer() -> None:
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
                runner(x)

        rows.append(row("infer", infer, 1))
        if profile:
            with torch.profiler.profile(record_shapes=True) as prof:
                infer()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
            print("By input shape:")
            by_shape = prof.key_averages(group_by_input_shape=True)
            print(by_shape.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))
    return rows


def bench_peak(n: int = 2048, iters: int = 5) -> list[dict]:
    """GFLOP/s of an ``n``-cubed matrix product per dtype with torch's threads: the most a model's GEMMs and
    convolutions can reach on this machine. A model's GFLOP (``bench model``'s TFLOP/s times ms) over this
    figure is its time floor in that dtype."""
    rows = []
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        times = _Timer(torch.device("cpu")).time(lambda a=a, b=b: a @ b, 2, iters)
        ms = statistics.median(times)
        threads = torch.get_num_threads()
        rows.append({"dtype": name, "n": n, "threads": threads, "ms": ms, "GFLOP/s": 2 * n**3 / ms / 1e6})
    return rows


def _onnxruntime_runner(net: torch.nn.Module, x: torch.Tensor, int8: bool = False):
    """A function running ``x`` through ``net`` exported to ONNX, in onnxruntime on the CPU (``int8``: with the
    MatMul and Gemm weights dynamically quantised to int8)."""
    import onnxruntime as ort

    from birefnet.export import export_onnx

    path = Path(tempfile.mkdtemp()) / "model.onnx"
    export_onnx(net, path, tuple(x.shape[-2:]), dynamic_size=False, check=False)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantized = path.with_name("model.int8.onnx")
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantiser's advice to pre-process (shape inference) is noise here
        try:
            quantize_dynamic(path, quantized, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        path = quantized
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"image": x.cpu().numpy()}
    return lambda: session.run(None, feed)


def bench_activation_memory(backbone: str = "swin_v1_l", size: int = 1024, **net_kwargs) -> list[dict]:
    """Bytes the training forward (model + DIS loss) keeps for backward, per image, fp32, on the ``meta`` device.

    Runs without a GPU and without real memory: every tensor saved by autograd is counted once, a view as the
    tensor it views (meta tensors have no storage to tell them apart, so views of one tensor would otherwise
    count several times). Compares the reference head (full-resolution 240-channel concat) with the fused head.
    """
    from birefnet.losses import DISLoss
    from birefnet.models import BiRefNet

    rows = []
    for fused in (False, True):
        with torch.device("meta"):
            net = BiRefNet(backbone, fused_head=fused, **net_kwargs).train()
            x, y = torch.randn(2, 3, size, size), torch.rand(2, 1, size, size)
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor, saved=saved) -> torch.Tensor:
            base = t._base if t._base is not None else t
            saved[id(base)] = base.numel() * base.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            DISLoss()(net(x), y)
        rows.append(
            {
                "model": f"BiRefNet {backbone}",
                "head": "fused" if fused else "reference (240-ch concat)",
                "size": size,
                "saved for backward, GiB / image (fp32)": sum(saved.values()) / 2**30 / 2,
            }
        )
    return rows


# -- metrics -------------------------------------------------------------------------------------------------
def _synthetic_pairs(out: Path, n: int, size: int, seed: int = 0) -> list[tuple[Path, Path]]:
    """gt: smoothed noise thresholded at a random quantile; pred: blurred gt + smooth error + 5% noise (uint8)."""
    import cv2

    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        field = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 25 + 35 * rng.random())
        gt = (field > np.quantile(field, 0.55 + 0.35 * rng.random())).astype(np.uint8) * 255
        err = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 20) * 600
        pred = cv2.GaussianBlur(gt.astype(np.float32), (0, 0), 3) + err
        noise = rng.random((size, size)) < 0.05
        pred[noise] = rng.integers(0, 256, int(noise.sum()))
        g, p = out / f"gt_{i:03d}.png", out / f"pred_{i:03d}.png"
        cv2.imwrite(str(g), gt)
        cv2.imwrite(str(p), np.clip(pred, 0, 255).astype(np.uint8))
        pairs.append((p, g))
    return pairs


_REFERENCE_SCRIPT = r"""
import sys, time, json, cv2, numpy as np, py_sod_metrics as M
pairs = json.loads(sys.argv[1])
ms = []
for p, g in pairs:  # best of 3 per image, as for ours
    pred, gt = cv2.imread(p, 0), cv2.imread(g, 0)
    best = float("inf")
    for _ in range(3):
        metrics = [M.MAE(), M.Smeasure(), M.Emeasure(), M.Fmeasure(), M.WeightedFmeasure(),
                   M.HumanCorrectionEffortMeasure()]
        t = time.perf_counter()
        for m in metrics:
            m.step(pred, gt)
        best = min(best, (time.perf_counter() - t) * 1000)
    ms.append(best)
print(json.dumps(ms))
"""


def _score_pair(pair: tuple[np.ndarray, np.ndarray]):
    from birefnet.metrics.functional import image_scores

    return image_scores(*pair)


def _folder_pairs(pred_dir: str, gt_dir: str, limit: int) -> list[tuple[Path, Path]]:
    """Up to ``limit`` (prediction, mask) pairs matched by stem, e.g. a model's saved predictions of a test set."""
    masks = {p.stem: p for p in Path(gt_dir).glob("*.png")}
    pairs = [(p, masks[p.stem]) for p in sorted(Path(pred_dir).glob("*.png")) if p.stem in masks]
    if not pairs:
        raise FileNotFoundError(f"No prediction in {pred_dir} has a mask of the same stem in {gt_dir}.")
    return pairs[:limit]


def _bench_update(loaded: list[tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    """``DISMetrics.update`` per image on uint8 maps and on float32 probabilities (the validation path), with
    PySODMetrics' metric set and with the full suite, after one warm-up update; best of 3 per image, median over
    images."""
    from birefnet.metrics import DISMetrics

    rows = []
    for metrics, with_boundary in (("MAE S E F wF HCE", False), ("MAE S E F wF HCE mBA BIoU IoU Dice", True)):
        for kind, convert in (
            ("uint8 maps", lambda a: torch.from_numpy(a)),
            ("float probabilities", lambda a: torch.from_numpy(a.astype(np.float32) / 255.0)),
        ):
            inputs = [(convert(p)[None], torch.from_numpy(g)[None]) for p, g in loaded]
            metric = DISMetrics(with_boundary=with_boundary)
            metric.update([inputs[0][0]], [inputs[0][1]])
            times = []
            for pred, gt in inputs:
                best = float("inf")
                for _ in range(3):
                    t = time.perf_counter()
                    metric.update([pred], [gt])
                    best = min(best, (time.perf_counter() - t) * 1000)
                times.append(best)
            rows.append(
                {
                    "implementation": f"DISMetrics.update, {kind} (1 process)",
                    "metrics": metrics,
                    "ms / image": statistics.median(times),
                }
            )
    return rows


def bench_metrics(
    images: int = 20,
    size: int = 1024,
    reference_python: str | None = None,
    workers: int | None = None,
    pred_dir: str | None = None,
    gt_dir: str | None = None,
) -> list[dict]:
    """Per-image time of the full suite here vs PySODMetrics (MAE, S, E, F, wF, HCE) on the same files.

    The files are ``images`` synthetic size x size pairs, or with ``pred_dir`` and ``gt_dir`` the first
    ``images`` predictions there with their masks. PNG decoding is excluded everywhere; the multi-process
    row is the wall time of scoring all pairs (sent to the workers as arrays) divided by their number.
    """
    import cv2

    from birefnet.metrics.functional import image_scores

    threads = os.environ.copy()
    threads.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        if pred_dir or gt_dir:
            if not (pred_dir and gt_dir):
                raise ValueError("Give both --pred-dir and --gt-dir.")
            pairs = _folder_pairs(pred_dir, gt_dir, images)
        else:
            pairs = _synthetic_pairs(Path(tmp), images, size)
        loaded = [(cv2.imread(str(p), 0), cv2.imread(str(g), 0)) for p, g in pairs]
        for pred, gt in loaded:  # compile / load the kernels, warm the allocator
            image_scores(pred, gt)
        rows = []
        for label, metrics, kwargs in (
            ("birefnet.metrics (1 process)", "MAE S E F wF HCE", {"with_boundary": False}),
            ("birefnet.metrics (1 process)", "MAE S E F wF HCE mBA BIoU IoU Dice", {}),
        ):
            times = []
            for pred, gt in loaded:  # best of 3 per image, median over images
                best = float("inf")
                for _ in range(3):
                    t = time.perf_counter()
                    image_scores(pred, gt, **kwargs)
                    best = min(best, (time.perf_counter() - t) * 1000)
                times.append(best)
            rows.append({"implementation": label, "metrics": metrics, "ms / image": statistics.median(times)})
        rows += _bench_update(loaded)
        workers = workers or os.cpu_count() or 1
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers) as pool:
                list(pool.map(_score_pair, loaded[:workers]))  # start the workers, load the kernels
                t = time.perf_counter()
                list(pool.map(_score_pair, loaded))
                wall = (time.perf_counter() - t) * 1000 / len(loaded)
            rows.append(
                {
                    "implementation": f"birefnet.metrics ({workers} processes)",
                    "metrics": rows[-1]["metrics"],
                    "ms / image": wall,
                }
            )
        if reference_python:
            out = subprocess.run(
                [reference_python, "-c", _REFERENCE_SCRIPT, json.dumps([(str(p), str(g)) for p, g in pairs])],
                capture_output=True,
                text=True,
                env=threads,
                check=True,
            )
            ref = statistics.median(json.loads(out.stdout.strip().splitlines()[-1]))
            rows.append(
                {"implementation": "PySODMetrics 1.6.2 (1 process)", "metrics": "MAE S E F wF HCE", "ms / image": ref}
            )
            for row in rows[:-1]:
                row["speed-up vs PySODMetrics"] = ref / row["ms / image"]
            rows[-1]["speed-up vs PySODMetrics"] = 1.0
    return rows


def bench_metric_parts(images: int = 20, size: int = 1024) -> list[dict]:
    """Where the suite's time goes: each stage alone on the synthetic pairs of :func:`bench_metrics`, next to
    scipy's feature transform and scikit-image's skeleton (when installed) that the kernels reproduce."""
    import cv2

    from birefnet.metrics import functional as F
    from birefnet.metrics import kernels as K

    def best_of_3(fn) -> float:
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            fn()
            best = min(best, (time.perf_counter() - t) * 1000)
        return best

    stages = {
        "all pixel-wise metrics incl. wF (no HCE, mBA, BIoU)": lambda q, g, p: F.image_scores(
            q, g, with_hce=False, with_boundary=False
        ),
        "weighted F-measure (kernel, incl. feature transform)": lambda q, g, p: F.weighted_f_measure(q, p, g),
        "feature transform (kernel)": lambda q, g, p: K.nearest_foreground(g),
        "skeleton (kernel)": lambda q, g, p: K.skeletonize(g),
        "HCE (incl. skeleton)": lambda q, g, p: F.hce(q >= np.searchsorted(p, 0.5, side="right"), g),
        "mBA": lambda q, g, p: F.mba(q, g),
        "BIoU curve": lambda q, g, p: F.boundary_iou_curve(q, g),
        # the float path: quantising probabilities, and the whole suite on them against the same uint8 map
        "quantise float32 probabilities (kernel)": lambda q, g, p, f: K.quantise_probabilities(f),
        "quantise float32 probabilities (numpy float64)": lambda q, g, p, f: np.floor(
            np.clip(f.astype(np.float64), 0, 1) * 255
        ).astype(np.uint8),
        "image_scores, uint8 map": lambda q, g, p: F.image_scores(q, g),
        "image_scores, float32 probabilities": lambda q, g, p, f: F.image_scores(f, g),
    }
    try:
        from scipy.ndimage import distance_transform_edt
        from skimage.morphology import skeletonize

        stages["scipy distance_transform_edt(return_indices=True)"] = lambda q, g, p: distance_transform_edt(
            ~g, return_indices=True
        )
        stages["skimage.morphology.skeletonize"] = lambda q, g, p: skeletonize(g)
    except ImportError:
        pass
    K.compile_kernels()
    with tempfile.TemporaryDirectory() as tmp:
        loaded = []
        for pred_path, gt_path in _synthetic_pairs(Path(tmp), images, size):
            q, g = cv2.imread(str(pred_path), 0), cv2.imread(str(gt_path), 0) > 128
            loaded.append((q, g, F._levels(int(q.min()), int(q.max())), q.astype(np.float32) / 255.0))

    def timed(fn) -> float:
        arity = fn.__code__.co_argcount  # the float-path stages also take the probabilities
        return statistics.median(best_of_3(lambda a=a: fn(*a[:arity])) for a in loaded)

    return [{"stage": name, "ms / image": timed(fn)} for name, fn in stages.items()]


# -- predict ---------------------------------------------------------------------------------------------------
def bench_predict(
    model: str = "birefnet",
    backbone: str = "swin_v1_t",
    size: int = 512,
    images: int = 10,
    source: str | None = None,
    backends: tuple[str, ...] = ("torch", "onnxruntime"),
    checkpoint: str | None = None,
) -> list[dict]:
    """``Predictor`` end to end per backend, as ``birefnet predict`` runs it: the setup (the first onnxruntime
    setup exports and caches the graph, the second loads it), ms per image (batch 1, resize and normalisation
    included, median after one warm-up) and, against the first backend, the share of pixels whose mask is within
    1/255, the share on the same side of 0.5, and the largest difference. A backend may name its precision:
    ``torch:bf16``. Random weights (seed 0) saved as a checkpoint with a ``size`` card, or ``checkpoint`` run at
    ``size`` (its cached graph is reused across runs: run once to export, again to measure the cached setup and its
    memory); the images come from ``source`` (a DIS-layout folder, then each backend's MAE against the ground
    truth is reported too) or are synthetic."""
    import cv2

    from birefnet.models import BiRefNet, U2Net, save_model
    from birefnet.predict import Predictor

    pairs = list(_sources(source, images))
    pictures = [cv2.cvtColor(img, cv2.COLOR_BGR2RGB) for img, _ in pairs]
    truths = [gt.astype(np.float32) / 255 for _, gt in pairs] if source else None
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        if checkpoint is None:
            torch.manual_seed(0)
            net = BiRefNet(backbone) if model == "birefnet" else U2Net(model)
            net.preprocessing = net.preprocessing.replace(input_size=(size, size))
            checkpoint = Path(tmp) / "model.safetensors"
            save_model(net.eval(), checkpoint)
            del net
        for name in backends:
            backend, _, precision = name.partition(":")
            precision = precision or ("auto" if backend == "auto" else "fp32")
            setups = []
            for _ in range(2 if backend == "onnxruntime" else 1):
                t = time.perf_counter()
                predictor = Predictor(checkpoint, (size, size), backend=backend, precision=precision)
                setups.append(time.perf_counter() - t)
            predictor.masks(pictures[:1])
            masks, times = [], []
            for picture in pictures:
                t = time.perf_counter()
                masks += predictor.masks([picture])
                times.append((time.perf_counter() - t) * 1000)
            config, card = getattr(predictor.model, "config", {}), predictor.card
            variant = config.get("backbone") or config.get("variant") or ""
            shape = f"{'x'.join(map(str, card.input_size))} px" if card.input_size else "own size"
            row = {
                "model": " ".join(v for v in (type(predictor.model).__name__, variant, shape) if v),
                "backend": name,
                "setup s (first, cached)": ", ".join(f"{s:.1f}" for s in setups),
                "ms / image": statistics.median(times),
                "peak RSS GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            }
            if truths is not None:
                row["MAE vs GT"] = float(np.mean([np.abs(m - g).mean() for m, g in zip(masks, truths, strict=True)]))
            if reference is None:
                reference = masks
            else:
                row.update(mask_agreement(reference, masks, backends[0]))
            rows.append(row)
            del predictor
    return rows


def mask_agreement(reference: list[np.ndarray], masks: list[np.ndarray], name: str) -> dict[str, float]:
    """How closely probability maps follow ``reference`` (pixels pooled over all images): the share within
    1/255, the share on the same side of 0.5 (the binarised masks agree), and the largest difference."""
    diff = np.concatenate([np.abs(a - b).ravel() for a, b in zip(reference, masks, strict=True)])
    same_side = np.concatenate([((a >= 0.5) == (b >= 0.5)).ravel() for a, b in zip(reference, masks, strict=True)])
    return {
        f"% px within 1/255 of {name}": 100 * float((diff <= 1 / 255).mean()),
        "% px same side of 0.5": 100 * float(same_side.mean()),
        "max |diff|": float(diff.max()),
    }


# -- data ----------------------------------------------------------------------------------------------------
def _sources(source: str | None, n: int):
    """``n`` (BGR image, mask) pairs: the first of a DIS-layout folder ``source`` (``im/``, ``gt/``), or smooth
    random photographs-like images with blob masks, so that the command needs no data files."""
    import cv2

    if source:
        for im in sorted((Path(source) / "im").glob("*.jpg"))[:n]:
            yield cv2.imread(str(im)), cv2.imread(str(Path(source) / "gt" / f"{im.stem}.png"), 0)
        return
    rng = np.random.default_rng(0)
    for _ in range(n):
        img = cv2.GaussianBlur(rng.random((384, 512, 3), dtype=np.float32), (0, 0), 6) * 255
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)  # texture for the JPEG coder
        field = cv2.GaussianBlur(rng.standard_normal((384, 512)).astype(np.float32), (0, 0), 30)
        yield img, (field > np.quantile(field, 0.6)).astype(np.uint8) * 255


def bench_data(samples: int = 60, source: str | None = None) -> list[dict]:
    """Training pipeline (decode, resize, reference augmentations, normalise) on one core, 2048x1536 JPEGs."""
    import cv2

    from birefnet.data.dataset import DISDataset
    from birefnet.data.transforms import train_transform

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "BIG"
        (root / "im").mkdir(parents=True)
        (root / "gt").mkdir()
        for i, (img, gt) in enumerate(_sources(source, 20)):
            img = cv2.resize(img, (2048, 1536), interpolation=cv2.INTER_CUBIC)
            gt = cv2.resize(gt, (2048, 1536))
            cv2.imwrite(str(root / "im" / f"{i:03d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(str(root / "gt" / f"{i:03d}.png"), gt)
        rows = []
        for label, fast in (("full-size decode", False), ("reduced JPEG decode", True)):
            ds = DISDataset(
                Path(tmp), "BIG", train_transform((1024, 1024)), decode_min_side=1024 if fast else None, reseed=True
            )
            for i in range(5):
                ds[i]
            times = []
            for i in range(samples):
                t = time.perf_counter()
                ds[i % len(ds)]
                times.append(time.perf_counter() - t)
            rows.append(
                {
                    "pipeline": f"birefnet ({label})",
                    "ms / sample (median)": 1000 * statistics.median(times),
                    "ms / sample (mean)": 1000 * statistics.mean(times),
                    "samples/s per core": 1 / statistics.mean(times),
                }
            )
    return rows


def _modes(text: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in text.split(",") if m.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``birefnet bench`` sub-commands; every option is the keyword argument of the function it runs."""
    sub = parser.add_subparsers(dest="bench", required=True)
    m = sub.add_parser("model", help="training step and inference timing")
    m.set_defaults(run=bench_model)
    m.add_argument("--model", default="birefnet", choices=["birefnet", "u2net", "u2netp"])
    m.add_argument("--backbone", default=None, help="default: pvt_v2_b0 on CPU, swin_v1_l on GPU")
    m.add_argument("--size", type=int, default=None)
    m.add_argument("--batch", type=int, default=None)
    m.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    m.add_argument("--compile", action="store_true")
    m.add_argument("--modes", type=_modes, default=("train", "infer"))
    m.add_argument("--warmup", type=int, default=2)
    m.add_argument("--iters", type=int, default=None)
    m.add_argument("--decoder-attention", default="ASPPDeformable")
    m.add_argument("--channels-last", action="store_true")
    m.add_argument("--grad-checkpointing", action="store_true")
    m.add_argument("--deform-impl", default="auto", choices=["auto", "torchvision", "grid_sample", "gather"])
    m.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"], help="inference runtime")
    m.add_argument(
        "--profile", action="store_true", help="print the operator profile of one inference, total and by input shape"
    )
    m.add_argument("--cast", action="store_true", help="inference with the network cast to --precision, BN folded")
    m.add_argument("--int8", action="store_true", help="onnxruntime: MatMul/Gemm weights dynamically quantised")
    pk = sub.add_parser("peak", help="matrix-product throughput per dtype: the ceiling for the model benches")
    pk.set_defaults(run=bench_peak)
    pk.add_argument("--n", type=int, default=2048)
    mt = sub.add_parser("metrics", help="metric suite vs PySODMetrics")
    mt.set_defaults(run=bench_metrics)
    mt.add_argument("--images", type=int, default=20)
    mt.add_argument("--size", type=int, default=1024)
    mt.add_argument("--reference-python", default=None, help="interpreter with pysodmetrics installed")
    mt.add_argument("--workers", type=int, default=None)
    mt.add_argument("--pred-dir", default=None, help="time saved predictions (PNG) instead of synthetic pairs")
    mt.add_argument("--gt-dir", default=None, help="their masks, matched by file stem")
    parts = sub.add_parser("metric-parts", help="each stage of the metric suite alone (synthetic pairs)")
    parts.set_defaults(run=bench_metric_parts)
    parts.add_argument("--images", type=int, default=20)
    parts.add_argument("--size", type=int, default=1024)
    mem = sub.add_parser("memory", help="activation memory kept for backward (meta device, no GPU needed)")
    mem.set_defaults(run=bench_activation_memory)
    mem.add_argument("--backbone", default="swin_v1_l")
    mem.add_argument("--size", type=int, default=1024)
    pr = sub.add_parser("predict", help="Predictor per inference backend: setup, ms / image, mask agreement")
    pr.set_defaults(run=bench_predict)
    pr.add_argument("--model", default="birefnet", choices=["birefnet", "u2net", "u2netp"])
    pr.add_argument("--backbone", default="swin_v1_t")
    pr.add_argument("--size", type=int, default=512)
    pr.add_argument("--images", type=int, default=10)
    pr.add_argument("--source", default=None, help="a DIS-layout folder (im/, gt/); default: synthetic images")
    pr.add_argument(
        "--backends",
        type=_modes,
        default=("torch", "onnxruntime"),
        help="comma list of backend[:precision] (torch:bf16); the first is the reference",
    )
    pr.add_argument("--checkpoint", default=None, help="a weights file instead of random weights")
    d = sub.add_parser("data", help="training data pipeline throughput")
    d.set_defaults(run=bench_data)
    d.add_argument("--samples", type=int, default=60)
    d.add_argument("--source", default=None, help="a DIS-layout folder (im/, gt/); default: synthetic images")
    for p in (m, pk, mt, parts, mem, pr, d):
        p.add_argument("--json", default=None, help="write the rows here")


def run_from_args(args: argparse.Namespace) -> int:
    """Run the chosen benchmark with the parsed options as keyword arguments; print the table, write JSON."""
    kwargs = {k: v for k, v in vars(args).items() if k not in ("command", "bench", "run", "json")}
    rows = args.run(**kwargs)
    title = f"birefnet bench {args.bench} on {machine()} (torch {torch.__version__})"
    _print_table(rows, title)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": machine(), "torch": torch.__version__, "rows": rows}, indent=1)
        )
    return 0
