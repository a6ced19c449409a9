"""The ``birefnet`` console command: ``birefnet predict ...``, ``birefnet export-onnx ...``, ``birefnet params``,
``birefnet zoo``, ``birefnet bench ...``."""

from __future__ import annotations

import argparse
import sys

from birefnet.errors import exit_on_user_error

__all__ = ["main"]


def _params(args: argparse.Namespace) -> int:
    import torch

    from birefnet.models import BiRefNet
    from birefnet.models.backbones import REFERENCE_BACKBONES

    print(f"{'backbone':<12} {'layout':<8} {'params':>14} {'state_dict keys':>16}")
    for backbone in args.backbones or REFERENCE_BACKBONES:
        with torch.device("meta"):
            model = BiRefNet(backbone, layout=args.layout)
        n = sum(p.numel() for p in model.parameters())
        print(f"{backbone:<12} {args.layout:<8} {n:>14,} {len(model.state_dict()):>16}")
    return 0


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    from birefnet import bench, export, predict

    parser = argparse.ArgumentParser(prog="birefnet")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="masks, cutouts and composites at full resolution")
    predict.add_arguments(p)
    e = sub.add_parser("export-onnx", help="export a checkpoint to ONNX and check it with onnxruntime")
    export.add_arguments(e)
    c = sub.add_parser("params", help="parameter and key counts per backbone (reference defaults)")
    c.add_argument("backbones", nargs="*")
    c.add_argument("--layout", default="current", choices=["current", "legacy"])
    sub.add_parser("zoo", help="the released weights by name, with their preprocessing cards (Markdown table)")
    bench.add_arguments(sub.add_parser("bench", help="speed and memory benchmarks (table + --json)"))
    args = parser.parse_args(argv)
    if args.command == "zoo":
        from birefnet.models.zoo import zoo_markdown

        print(zoo_markdown(), end="")
        return 0
    if args.command == "predict":
        return predict.run_from_args(args)
    if args.command == "export-onnx":
        return export.run_from_args(args)
    if args.command == "bench":
        return bench.run_from_args(args)
    return _params(args)


if __name__ == "__main__":
    sys.exit(main())
