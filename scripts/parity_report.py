"""Print how closely this implementation reproduces every reference fixture (the figures quoted in the README).

python scripts/parity_report.py [../shared/fixtures]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from birefnet.losses import PixelLoss
from birefnet.models import BiRefNet, U2Net
from birefnet.models.birefnet import laplacian_k5
from birefnet.models.swin import SwinTransformer


def _state(data: dict) -> dict:
    return {
        k[len("state_dict.") :]: v.float() if v.is_floating_point() else v
        for k, v in data.items()
        if k.startswith("state_dict.")
    }


@torch.no_grad()
def main(root: Path) -> None:
    d = load_file(str(root / "birefnet_pvt_v2_b0_eval.safetensors"))
    m = BiRefNet("pvt_v2_b0").eval()
    m.load_state_dict(_state(d))
    err = max((m(d[f"input.{i}"]).logits - d[f"output.{i}"]).abs().max().item() for i in range(2))
    print(f"BiRefNet pvt_v2_b0 eval logits, 2 inputs: max abs diff {err:.1e}")

    d = load_file(str(root / "swin_v1_tiny_w12.safetensors"))
    s = SwinTransformer(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=12).eval()
    s.load_state_dict(_state(d))
    err = max((o - d[f"output.{i}.{j}"]).abs().max().item() for i in range(3) for j, o in enumerate(s(d[f"input.{i}"])))
    print(f"Swin-V1 (window 12) four stage maps, 3 sizes: max abs diff {err:.1e}")

    d = load_file(str(root / "gradient_reference.safetensors"))
    err = (laplacian_k5(d["input"].mean(1, keepdim=True)) - d["laplacian_k5"]).abs().max().item()
    print(f"outward-reference Laplacian target: max abs diff {err:.1e}")

    d = load_file(str(root / "pixloss_dis5k.safetensors"))
    with safe_open(str(root / "pixloss_dis5k.safetensors"), "pt") as f:
        weights = json.loads(f.metadata()["lambdas"])
    total, parts = PixelLoss(weights)([d[f"pred.{i}"] for i in range(4)], d["gt"])
    part_err = max(abs(parts[k].item() - d[f"part.{k}"].item()) for k in parts)
    print(f"DIS5K pixel loss: total {total.item():.5f} vs {d['total'].item():.5f}; parts max abs diff {part_err:.1e}")

    d = load_file(str(root / "u2netp_eval.safetensors"))
    u = U2Net("u2netp").eval()
    u.load_state_dict(_state(d))
    err = 0.0
    for i in range(2):
        out = u(d[f"input.{i}"])
        for j, logits in enumerate([out.logits, *out.side_logits]):
            err = max(err, (torch.sigmoid(logits) - d[f"output.{i}.{j}"]).abs().max().item())
    print(f"U2-Netp seven maps, 2 inputs: max abs diff {err:.1e}")


if __name__ == "__main__":
    main(
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"
    )
