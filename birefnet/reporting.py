"""Everything evaluation writes for a person to read: metric tables (terminal, Markdown, LaTeX, CSV, JSON), curve
plots and values, worst cases, and prediction PNGs. Columns, order and number formats come from the metric
registry (:mod:`birefnet.metrics.registry`); this is the only table writer of the package.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_only

from birefnet.atomic import atomic_path, atomic_write_text
from birefnet.metrics.registry import METRICS, format_value, ordered
from birefnet.models.blocks import resize

__all__ = [
    "add_group_means",
    "full_size_uint8",
    "metrics_table",
    "plot_curves",
    "print_table",
    "select_best",
    "table_rows",
    "write_curves",
    "write_results",
    "write_selection",
]

Results = Mapping[str, Mapping[str, Mapping[str, float]]]  # {set: {method: {metric: value}}}


def full_size_uint8(prob: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A ``(1, h, w)`` / ``(h, w)`` probability map resized (bilinear, corners aligned, as the reference) to ``size``
    and quantised as the reference saves it (``mul(255).byte()`` after clamping): ``(H, W)`` uint8."""
    full = resize(prob.reshape(1, 1, *prob.shape[-2:]).float(), tuple(size))[0, 0]
    return (full.clamp(0, 1) * 255).byte()


def add_group_means(results: Results, groups: Mapping[str, list[str]] | None) -> dict:
    """``results`` with one more row per group of sets: the mean of each metric over the group's sets present for
    that method (the BiRefNet paper's ``DIS-TEs`` = mean of DIS-TE1..4, DIS-VD excluded), after the sets."""
    out = {s: dict(ms) for s, ms in results.items()}
    for group, sets in (groups or {}).items():
        present = [s for s in sets if s in results]
        methods = dict.fromkeys(m for s in present for m in results[s])
        rows = {}
        for method in methods:
            values = [results[s][method] for s in present if method in results[s]]
            keys = [k for k in values[0] if all(k in v for v in values)]
            rows[method] = {k: sum(float(v[k]) for v in values) / len(values) for k in keys}
        if rows:
            out[group] = rows
    return out


def table_rows(results: Results) -> tuple[list[str], list[list[str]]]:
    """The metric columns (registry order) and the formatted rows ``[set, method, values...]`` of a table."""
    keys = ordered({k for methods in results.values() for vals in methods.values() for k in vals})
    rows = [
        [s, method, *(format_value(k, vals[k]) if k in vals else "-" for k in keys)]
        for s, methods in results.items()
        for method, vals in methods.items()
    ]
    return keys, rows


def metrics_table(results: Results, fmt: str = "markdown") -> str:
    """``{set: {method: {metric: value}}}`` as a Markdown or LaTeX table."""
    keys, rows = table_rows(results)
    header = ["Dataset", "Method", *keys]
    if fmt == "latex":
        lines = [" & ".join(header) + r" \\ \hline"] + [" & ".join(r) + r" \\" for r in rows]
        return "\\begin{tabular}{ll" + "c" * len(keys) + "}\n" + "\n".join(lines) + "\n\\end{tabular}\n"
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def print_table(results: Results, title: str) -> None:
    """The same table on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    keys, rows = table_rows(results)
    table = Table(title=title)
    for col in ("Dataset", "Method", *keys):
        table.add_column(col, justify="left" if col in ("Dataset", "Method") else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=max(120, 14 * (len(keys) + 2))).print(table)


@rank_zero_only
def write_results(results: Results, output_dir: str | Path, stem: str = "results") -> Path:
    """Write ``<stem>.json``, ``.csv``, ``.md`` and ``.tex`` into ``output_dir``; returns the JSON path."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plain = {s: {m: {k: float(v) for k, v in vals.items()} for m, vals in ms.items()} for s, ms in results.items()}
    atomic_write_text(out / f"{stem}.json", json.dumps(plain, indent=2))
    keys = ordered({k for ms in plain.values() for vals in ms.values() for k in vals})
    csv = ["dataset,method," + ",".join(keys)]
    csv += [
        f"{s},{m}," + ",".join(f"{vals.get(k, float('nan')):.6f}" for k in keys)
        for s, ms in plain.items()
        for m, vals in ms.items()
    ]
    atomic_write_text(out / f"{stem}.csv", "\n".join(csv) + "\n")
    atomic_write_text(out / f"{stem}.md", metrics_table(plain, "markdown"))
    atomic_write_text(out / f"{stem}.tex", metrics_table(plain, "latex"))
    return out / f"{stem}.json"


def write_curves(curves: Mapping[str, Mapping[str, Mapping[str, torch.Tensor]]], output_dir: Path) -> Path:
    """The curve values behind the plots, ``curves.json``: ``{set: {method: {fm|em|precision|recall: [256]}}}``."""
    values = {
        s: {m: {k: [round(float(v), 8) for v in c] for k, c in mc.items()} for m, mc in ms.items()}
        for s, ms in curves.items()
    }
    path = Path(output_dir) / "curves.json"
    atomic_write_text(path, json.dumps(values))
    return path


def plot_curves(curves: Mapping[str, Mapping[str, Mapping[str, torch.Tensor]]], output_dir: Path) -> list[Path]:
    """One PNG per set: precision-recall and F-measure-vs-threshold curves of every method."""
    # a bare Figure (no pyplot): no global backend switch, so notebooks keep their inline plots
    from matplotlib.figure import Figure

    paths = []
    for set_name, methods in curves.items():
        fig = Figure(figsize=(10, 4.2))
        ax_pr, ax_f = fig.subplots(1, 2)
        thresholds = torch.arange(255, -1, -1)
        for method, c in methods.items():
            ax_pr.plot(c["recall"].numpy(), c["precision"].numpy(), label=method)
            ax_f.plot(thresholds.numpy(), c["fm"].numpy(), label=method)
        ax_pr.set(
            xlabel="recall", ylabel="precision", title=f"{set_name}: precision-recall", xlim=(0, 1), ylim=(0, 1.02)
        )
        ax_f.set(
            xlabel="threshold (of 255)",
            ylabel="F-measure (beta^2 = 0.3)",
            title=f"{set_name}: F vs threshold",
            xlim=(0, 255),
            ylim=(0, 1.02),
        )
        for ax in (ax_pr, ax_f):
            ax.grid(alpha=0.3)
            ax.legend(loc="lower left")
        fig.tight_layout()
        path = Path(output_dir) / f"curves_{set_name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
        paths.append(path)
    return paths


def select_best(results: Results, sets: list[str], methods: list[str], criteria: list[str]) -> dict:
    """The reference's checkpoint choice (``gen_best_ep.py``): for each criterion the method (checkpoint) with the
    best sum over ``sets`` (highest, or lowest for metrics where lower is better, e.g. HCE).

    Returns ``{"criteria": [...], "sums": {method: {criterion: sum}}, "best": {criterion: {"method", "sum"}}}``.
    """
    sums = {
        m: {c: sum(float(results[s][m][c]) for s in sets if m in results.get(s, {})) for c in criteria} for m in methods
    }
    best = {}
    for c in criteria:
        higher = METRICS[c].higher_is_better if c in METRICS else True
        winner = (max if higher else min)(methods, key=lambda m, c=c: sums[m][c])
        best[c] = {"method": winner, "sum": sums[winner][c]}
    return {"criteria": list(criteria), "sets": list(sets), "sums": sums, "best": best}


@rank_zero_only
def write_selection(selection: dict, output_dir: str | Path) -> Path:
    """``selection.json`` and ``selection.md``: every candidate's sums, the best per criterion marked."""
    out = Path(output_dir)
    atomic_write_text(out / "selection.json", json.dumps(selection, indent=2))
    criteria = selection["criteria"]
    lines = [
        f"Sums over {', '.join(selection['sets'])}; best per criterion in bold.",
        "",
        "| candidate | " + " | ".join(f"sum {c}" for c in criteria) + " |",
        "|---|" + "---|" * len(criteria),
    ]
    for method, sums in selection["sums"].items():
        cells = []
        for c in criteria:
            text = format_value(c, sums[c])
            cells.append(f"**{text}**" if selection["best"][c]["method"] == method else text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", *(f"- best by {c}: {b['method']}" for c, b in selection["best"].items())]
    atomic_write_text(out / "selection.md", "\n".join(lines) + "\n")
    return out / "selection.json"
