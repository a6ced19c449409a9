#!/usr/bin/env bash
# BiRefNet Swin-V1-T at 512 px, batch 1, on this CPU: every inference path of this version, and the inference code
# that the reference comparison measured (commit 6137046: grid_sample + einsum deformable convolution, fp32) as the
# yardstick of the machine's speed on the day. The reference comparison (2026-11-29, same VM type) measured the
# reference at 1925 ms and that code at 1270 ms in one process; a VM that runs slower today runs both slower, so the
# reference's time today is estimated as 1925 * (that code today / 1270), per round (each path against the same
# round's yardstick, so that drift between rounds cancels) and from the medians.
#
#   scripts/bench_cpu_inference.sh [rounds]     (from the repository root, in the project's environment)
#
# Rounds alternate the paths so that drift in the machine's speed reaches all of them. JSON rows go to
# $OUT (default logs/bench-cpu-inference/); the summary table is printed at the end.
set -euo pipefail
rounds=${1:-3}
out=$(realpath -m "${OUT:-logs/bench-cpu-inference}")
then_commit=6137046
mkdir -p "$out"
then_tree=$(mktemp -d)
git worktree add --detach --quiet "$then_tree" "$then_commit"
trap 'git worktree remove --force "$then_tree"' EXIT
common=(--backbone swin_v1_t --size 512 --batch 1 --modes infer --warmup 1 --iters 5)
for r in $(seq "$rounds"); do
  # python -m from the old tree imports its birefnet package (the current directory comes first on the path)
  (cd "$then_tree" && python -m birefnet.cli bench model "${common[@]}" --precision fp32 --json "$out/then-fp32-$r.json")
  birefnet bench model "${common[@]}" --precision fp32 --json "$out/torch-fp32-$r.json"
  birefnet bench model "${common[@]}" --precision bf16 --cast --json "$out/torch-bf16-cast-$r.json"
  birefnet bench model "${common[@]}" --backend onnxruntime --json "$out/onnxruntime-fp32-$r.json"
done
birefnet bench peak --json "$out/peak.json"
python - "$out" <<'PY'
import json, statistics, sys
from pathlib import Path

out = Path(sys.argv[1])
REFERENCE_MS, THEN_MS = 1925.0, 1270.0  # ../shared/docs/reference-performance.md, 2026-11-29
def runs(name):
    return [json.loads(p.read_text())["rows"][0] for p in sorted(out.glob(f"{name}-[0-9]*.json"))]
then = statistics.median(r["ms"] for r in runs("then-fp32"))
gflop = runs("torch-fp32")[0]["GFLOP / image"]  # the same network in every row
factor = then / THEN_MS
reference_today = REFERENCE_MS * factor
peak = {r["dtype"]: r["GFLOP/s"] for r in json.loads((out / "peak.json").read_text())["rows"]}
machine = json.loads(next(out.glob("torch-fp32-*.json")).read_text())["machine"]
print(f"\n{machine}; the code of the reference comparison: {then:.0f} ms today against {THEN_MS:.0f} ms then "
      f"(machine {factor:.2f}x slower), so the reference would take about {reference_today:.0f} ms today.")
print(f"Matrix-product ceiling: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s; the network's "
      f"{gflop:.0f} GFLOP take at least {gflop / peak['fp32'] * 1000:.0f} ms in fp32, {gflop / peak['bf16'] * 1000:.0f} ms "
      "in bf16.\n")
print("| path | ms per round | median ms | GFLOP/s | vs reference, per round | median of the rounds | peak RSS GB |")
print("|---|---|---|---|---|---|---|")
then_rounds = [r["ms"] for r in runs("then-fp32")]
for name, label in [("then-fp32", "commit 6137046, torch eager fp32"), ("torch-fp32", "torch eager fp32"),
                    ("torch-bf16-cast", "torch, network cast to bf16 (BatchNorm folded)"),
                    ("onnxruntime-fp32", "onnxruntime fp32")]:
    rs = runs(name)
    ms = statistics.median(r["ms"] for r in rs)
    gflops = gflop / ms * 1000
    each = ", ".join(str(round(r["ms"])) for r in rs)
    # each round's path against the same round's yardstick: drift between rounds cancels
    paired = [REFERENCE_MS * t / THEN_MS / r["ms"] for t, r in zip(then_rounds, rs)]
    ratios = ", ".join(f"{x:.2f}x" for x in paired)
    print(f"| {label} | {each} | {ms:.0f} | {gflops:.0f} | {ratios} | {statistics.median(paired):.2f}x | "
          f"{max(r['peak RSS GB'] for r in rs):.2f} |")
PY
