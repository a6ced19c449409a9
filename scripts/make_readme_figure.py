"""Before/after figure for the README from the outputs of ``birefnet predict``.

    birefnet predict data/sample/ECSSD-TE/im/0045.jpg --checkpoint CKPT --output /tmp/pred \\
        --outputs mask,cutout,composite --background 40,120,200 --refine-foreground --size 256
    python scripts/make_readme_figure.py data/sample/ECSSD-TE/im/0045.jpg /tmp/pred docs/predict_example.jpg
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image


def checkerboard(h: int, w: int, cell: int = 12) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    board = ((yy // cell + xx // cell) % 2).astype(np.uint8) * 60 + 180
    return np.repeat(board[..., None], 3, axis=2)


def main(image: str, pred_dir: str, out: str) -> None:
    stem = Path(image).stem
    original = np.asarray(Image.open(image).convert("RGB"))
    mask = np.asarray(Image.open(Path(pred_dir) / f"{stem}.png"))
    cutout = np.asarray(Image.open(Path(pred_dir) / f"{stem}_cutout.png")).astype(np.float32)
    composite = np.asarray(Image.open(Path(pred_dir) / f"{stem}_composite.png").convert("RGB"))
    a = cutout[..., 3:] / 255.0
    over_board = (cutout[..., :3] * a + checkerboard(*original.shape[:2]) * (1 - a)).astype(np.uint8)
    gap = np.full((original.shape[0], 8, 3), 255, np.uint8)
    panels = [original, gap, np.repeat(mask[..., None], 3, axis=2), gap, over_board, gap, composite]
    Image.fromarray(np.concatenate(panels, axis=1)).save(out, quality=88)
    print("wrote", out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
