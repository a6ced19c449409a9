"""Benchmarks: ``python -m birefnet.bench [model|metrics|data] [options]``.

* ``model`` (default): training step (forward, full loss incl. the gradient-reference term, backward, AdamW
  step) and inference of BiRefNet and U2-Net on random data; CUDA events after warm-up on a GPU, wall clock on
  CPU. With no arguments on a CPU-only machine it runs a tiny configuration in well under a minute.
* ``metrics``: the DIS metric suite per 1024x1024 image against PySODMetrics (run in another interpreter
  given by ``--reference-python``, since it pins an older numpy), both timed in one run with the ratio.
* ``data``: training-pipeline samples/s per CPU core at 1024x1024 from 2048x1536 JPEG sources.
* ``memory``: activation bytes the training forward keeps for backward, counted on the ``meta`` device.

Every command prints a table and writes JSON (``--json``) with the machine named.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["bench_activation_memory", "bench_data", "bench_metrics", "bench_model", "machine"]


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
    backbone: str = "pvt_v2_b0",
    size: int = 256,
    batch: int = 2,
    precision: str = "bf16",
    compile: bool = False,
    modes: tuple[str, ...] = ("train", "infer"),
    warmup: int = 2,
    iters: int = 5,
    decoder_attention: str = "ASPPDeformable",
    channels_last: bool = False,
    grad_checkpointing: bool = False,
    deform_impl: str = "auto",
) -> list[dict]:
    """Time the training step and/or inference of one configuration; returns table rows."""
    from birefnet.losses import DISLoss, MultiBCELoss
    from birefnet.models import BiRefNet, U2Net

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
        return {
            "model": name,
            "mode": mode,
            "precision": precision,
            "compile": compile,
            "size": size,
            "batch": batch,
            "ms": ms,
            "images/s": batch / ms * 1000,
            "TFLOP/s": flop_factor * flops / ms / 1e9,
            "peak GB": peak,
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
    if "infer" in modes:
        net.eval()

        def infer() -> None:
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
                runner(x)

        rows.append(row("infer", infer, 1))
    return rows


def bench_activation_memory(backbone: str = "swin_v1_l", size: int = 1024, **net_kwargs) -> list[dict]:
    """Bytes the training forward (model + DIS loss) keeps for backward, per image, fp32, on the ``meta`` device.

    Runs without a GPU and without real memory: every tensor saved by autograd is counted once (by identity).
    Compares the reference head (full-resolution 240-channel concat) with the fused head.
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
            saved[id(t)] = t.numel() * t.element_size()
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
            loaded.append((q, g, F._levels(int(q.min()), int(q.max()))))
    return [
        {"stage": name, "ms / image": statistics.median(best_of_3(lambda a=a, fn=fn: fn(*a)) for a in loaded)}
        for name, fn in stages.items()
    ]


# -- data ----------------------------------------------------------------------------------------------------
def bench_data(samples: int = 60, source: str | None = None) -> list[dict]:
    """Training pipeline (decode, resize, reference augmentations, normalise) on one core, 2048x1536 JPEGs."""
    import cv2

    from birefnet.data.dataset import DISDataset
    from birefnet.data.transforms import train_transform

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    src = Path(source) if source else Path(__file__).resolve().parent.parent / "data" / "sample" / "ECSSD-TR"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "BIG"
        (root / "im").mkdir(parents=True)
        (root / "gt").mkdir()
        for i, im in enumerate(sorted((src / "im").glob("*.jpg"))[:20]):
            img = cv2.resize(cv2.imread(str(im)), (2048, 1536), interpolation=cv2.INTER_CUBIC)
            gt = cv2.resize(cv2.imread(str(src / "gt" / f"{im.stem}.png"), 0), (2048, 1536))
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m birefnet.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    m = sub.add_parser("model", help="training step and inference timing")
    m.add_argument("--model", default="birefnet", choices=["birefnet", "u2net", "u2netp"])
    m.add_argument("--backbone", default=None, help="default: pvt_v2_b0 on CPU, swin_v1_l on GPU")
    m.add_argument("--size", type=int, default=None)
    m.add_argument("--batch", type=int, default=None)
    m.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    m.add_argument("--compile", action="store_true")
    m.add_argument("--modes", default="train,infer")
    m.add_argument("--iters", type=int, default=None)
    m.add_argument("--decoder-attention", default="ASPPDeformable")
    m.add_argument("--channels-last", action="store_true")
    m.add_argument("--grad-checkpointing", action="store_true")
    m.add_argument("--deform-impl", default="auto", choices=["auto", "torchvision", "grid_sample"])
    mt = sub.add_parser("metrics", help="metric suite vs PySODMetrics")
    mt.add_argument("--images", type=int, default=20)
    mt.add_argument("--size", type=int, default=1024)
    mt.add_argument("--reference-python", default=None, help="interpreter with pysodmetrics installed")
    mt.add_argument("--workers", type=int, default=None)
    mt.add_argument("--pred-dir", default=None, help="time saved predictions (PNG) instead of synthetic pairs")
    mt.add_argument("--gt-dir", default=None, help="their masks, matched by file stem")
    mt.add_argument("--parts", action="store_true", help="time each stage instead (synthetic pairs)")
    mem = sub.add_parser("memory", help="activation memory kept for backward (meta device, no GPU needed)")
    mem.add_argument("--backbone", default="swin_v1_l")
    mem.add_argument("--size", type=int, default=1024)
    d = sub.add_parser("data", help="training data pipeline throughput")
    d.add_argument("--samples", type=int, default=60)
    for p in (m, mt, mem, d):
        p.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    command = args.command or "model"
    if command == "model":
        gpu = torch.cuda.is_available()
        defaults = ("swin_v1_l", 1024, 4, 10) if gpu else ("pvt_v2_b0", 256, 2, 3)
        rows = bench_model(
            getattr(args, "model", "birefnet"),
            getattr(args, "backbone", None) or defaults[0],
            getattr(args, "size", None) or defaults[1],
            getattr(args, "batch", None) or defaults[2],
            getattr(args, "precision", "bf16"),
            getattr(args, "compile", False),
            tuple(getattr(args, "modes", "train,infer").split(",")),
            2,
            getattr(args, "iters", None) or defaults[3],
            getattr(args, "decoder_attention", "ASPPDeformable"),
            getattr(args, "channels_last", False),
            getattr(args, "grad_checkpointing", False),
            getattr(args, "deform_impl", "auto"),
        )
    elif command == "memory":
        rows = bench_activation_memory(args.backbone, args.size)
    elif command == "metrics":
        if args.parts:
            rows = bench_metric_parts(args.images, args.size)
        else:
            rows = bench_metrics(
                args.images, args.size, args.reference_python, args.workers, args.pred_dir, args.gt_dir
            )
    else:
        rows = bench_data(args.samples)
    title = f"birefnet.bench {command} on {machine()} (torch {torch.__version__})"
    _print_table(rows, title)
    if getattr(args, "json", None):
        Path(args.json).write_text(
            json.dumps({"machine": machine(), "torch": torch.__version__, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main(sys.argv[1:])
