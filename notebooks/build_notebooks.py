"""Write the notebooks' source cells; ``python notebooks/build_notebooks.py --execute`` also runs them.

The notebooks are committed with their outputs (from a run on the bundled sample) so they read well on a
code host; tests/test_notebooks.py executes them headless and fails on any cell error.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = """\
from pathlib import Path
import birefnet
PROJECT_ROOT = birefnet.PROJECT_ROOT
%matplotlib inline
%config InlineBackend.figure_formats = ['jpeg']
import matplotlib.pyplot as plt
import numpy as np
"""

NB1 = [
    new_markdown_cell("# 01 · Data: browse a DIS-layout dataset\n\nImage/mask pairs with overlays, image sizes and "
                      "foreground fractions, and what the training augmentations do. Change the path cell to look at "
                      "your own data (e.g. DIS5K's `DIS-TR`)."),
    new_code_cell(SETUP),
    new_code_cell("# the one cell to change for your data: <DATA_ROOT>/<SET>/{im,gt}\n"
                  "DATA_ROOT = PROJECT_ROOT / 'data' / 'sample'\nSETS = ['ECSSD-TR']"),
    new_code_cell("from birefnet.data import DISDataset\n"
                  "ds = DISDataset(DATA_ROOT, SETS, keep_full_mask=True)  # validates the folder: pairs, sizes, files\n"
                  "print(f'{len(ds)} pairs in {DATA_ROOT} ({\"+\".join(SETS)})')"),
    new_markdown_cell("## Image / mask grid with overlays"),
    new_code_cell("from birefnet.data.io import read_image, read_mask\n"
                  "picks = np.linspace(0, len(ds) - 1, 6).astype(int)\n"
                  "fig, axes = plt.subplots(3, 6, figsize=(16, 7))\n"
                  "for col, i in enumerate(picks):\n"
                  "    s = ds.samples[i]\n"
                  "    img, mask = read_image(s.image), read_mask(s.mask)\n"
                  "    overlay = img.copy(); overlay[mask > 128] = (0.5 * overlay[mask > 128] + [0, 127, 0]).astype(np.uint8)\n"
                  "    for row, (pic, title) in enumerate([(img, s.name), (mask, 'mask'), (overlay, 'overlay')]):\n"
                  "        axes[row, col].imshow(pic, cmap='gray' if pic.ndim == 2 else None); axes[row, col].set_title(title)\n"
                  "        axes[row, col].axis('off')\n"
                  "plt.tight_layout()"),
    new_markdown_cell("## Sizes and foreground fractions"),
    new_code_cell("from birefnet.data.io import image_size\n"
                  "sizes = np.array([image_size(s.image) for s in ds.samples])\n"
                  "fg = np.array([(read_mask(s.mask) > 128).mean() for s in ds.samples])\n"
                  "fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))\n"
                  "axes[0].scatter(sizes[:, 1], sizes[:, 0], s=12); axes[0].set(xlabel='width', ylabel='height', title='image sizes')\n"
                  "axes[1].hist(sizes[:, 1] / sizes[:, 0], bins=20); axes[1].set(xlabel='aspect ratio (W/H)', title='aspect ratios')\n"
                  "axes[2].hist(fg, bins=20); axes[2].set(xlabel='foreground fraction (mask > 128)', title='foreground fractions')\n"
                  "plt.tight_layout()\n"
                  "print(f'median size {np.median(sizes, 0).astype(int)} (HxW); foreground {fg.min():.1%} .. {fg.max():.1%}, median {np.median(fg):.1%}')"),
    new_markdown_cell("## The training augmentations on one sample\n\nThe reference pipeline: resize, horizontal "
                      "flip (p 0.5), rotation (p 0.2), colour enhancement, pepper noise; image and mask stay aligned."),
    new_code_cell("from birefnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, seed_pipeline, train_transform\n"
                  "pipeline = train_transform((256, 256), ['flip', 'rotate', 'enhance', 'pepper'])\n"
                  "s = ds.samples[picks[1]]\n"
                  "img, mask = read_image(s.image), read_mask(s.mask)\n"
                  "fig, axes = plt.subplots(2, 6, figsize=(16, 5.5))\n"
                  "for k in range(6):\n"
                  "    seed_pipeline(pipeline, k)\n"
                  "    out = pipeline(image=img, mask=mask)\n"
                  "    rgb = out['image'].numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN\n"
                  "    axes[0, k].imshow(np.clip(rgb, 0, 1)); axes[0, k].set_title(f'seed {k}'); axes[0, k].axis('off')\n"
                  "    axes[1, k].imshow(out['mask'][0], cmap='gray'); axes[1, k].axis('off')\n"
                  "plt.tight_layout()"),
]

TRAIN_CFG = "from birefnet.utils import compose_config  # compose configs/<name>.yaml with overrides\n"

NB2 = [
    new_markdown_cell("# 02 · Train and evaluate\n\nCompose the Hydra config in the notebook, train a small BiRefNet "
                      "for a few epochs on the sample, evaluate it: metric table, PR and F-threshold curves, worst "
                      "cases. For real data change `DATA` (e.g. `['data=dis5k', 'paths.data_dir=/data/dis']`) and the "
                      "epochs."),
    new_code_cell(SETUP + "import tempfile\nRUN_DIR = Path(tempfile.mkdtemp(prefix='birefnet_nb02_'))"),
    new_code_cell("# the cell to change for real data\nDATA = ['data=sample', 'data.size=[128,128]', 'data.num_workers=0']\n"
                  "TRAINING = ['trainer.max_epochs=6', 'trainer.accelerator=cpu', 'model.optimizer.lr=5e-4', '~logger',\n"
                  "            'trainer.enable_progress_bar=false', 'seed=0']"),
    new_code_cell(TRAIN_CFG),
    new_code_cell("from birefnet.train import train\n"
                  "cfg = compose_config('train', DATA + TRAINING, RUN_DIR / 'train')\n"
                  "metrics, objects = train(cfg)\n"
                  "best = objects['trainer'].checkpoint_callback.best_model_path\n"
                  "print('best checkpoint:', best)"),
    new_markdown_cell("## Evaluate the checkpoint (predictions saved, all metrics)"),
    new_code_cell("from birefnet.evaluate import evaluate\n"
                  "ecfg = compose_config('eval', DATA + ['trainer.accelerator=cpu', f'checkpoint={best}', 'method=birefnet_tiny',\n"
                  "                                      'save_predictions=true', 'trainer.enable_progress_bar=false'], RUN_DIR / 'eval')\n"
                  "results = evaluate(ecfg)"),
    new_code_cell("from IPython.display import Markdown, Image, display\n"
                  "display(Markdown((RUN_DIR / 'eval' / 'results.md').read_text()))"),
    new_code_cell("display(Image(filename=str(RUN_DIR / 'eval' / 'curves_ECSSD-TE.png')))"),
    new_markdown_cell("## Worst cases (highest MAE)"),
    new_code_cell("import json\nfrom birefnet.data.io import read_image, read_mask\n"
                  "worst = json.loads((RUN_DIR / 'eval' / 'worst_cases.json').read_text())['ECSSD-TE']['birefnet_tiny'][:4]\n"
                  "root = PROJECT_ROOT / 'data' / 'sample' / 'ECSSD-TE'\n"
                  "fig, axes = plt.subplots(len(worst), 3, figsize=(10, 3 * len(worst)))\n"
                  "for row, w in zip(axes, worst):\n"
                  "    pred = read_mask(RUN_DIR / 'eval' / 'predictions' / 'birefnet_tiny' / 'ECSSD-TE' / f\"{w['name']}.png\")\n"
                  "    for ax, pic, title in zip(row, [read_image(root / 'im' / f\"{w['name']}.jpg\"), read_mask(root / 'gt' / f\"{w['name']}.png\"), pred],\n"
                  "                              [w['name'], 'ground truth', f\"prediction (MAE {w['MAE']:.3f})\"]):\n"
                  "        ax.imshow(pic, cmap='gray' if pic.ndim == 2 else None); ax.set_title(title); ax.axis('off')\n"
                  "plt.tight_layout()"),
]

NB3 = [
    new_markdown_cell("# 03 · BiRefNet versus U2-Net\n\nTrain both on the same data (or load official checkpoints "
                      "when you have them), evaluate both, put the table next to the published DIS5K numbers, compare "
                      "masks qualitatively, and cut a subject out with the predict tool."),
    new_code_cell(SETUP + "import tempfile\nRUN_DIR = Path(tempfile.mkdtemp(prefix='birefnet_nb03_'))"),
    new_code_cell("# the cell to change: data, and official checkpoints if you have them (None: train small ones here)\n"
                  "DATA = ['data=sample', 'data.size=[128,128]', 'data.num_workers=0']\n"
                  "OFFICIAL = {'birefnet': None, 'u2net': None}  # e.g. '/weights/BiRefNet-DIS-epoch_590.pth', '/weights/u2net.pth'\n"
                  "EPOCHS = 3"),
    new_code_cell(TRAIN_CFG),
    new_code_cell("from birefnet.train import train\n"
                  "checkpoints = {}\n"
                  "for method, model_cfg in [('birefnet', 'model=birefnet_tiny'), ('u2net', 'model=u2netp')]:\n"
                  "    if OFFICIAL[method]:\n"
                  "        checkpoints[method] = OFFICIAL[method]; continue\n"
                  "    overrides = [model_cfg, *DATA, f'trainer.max_epochs={EPOCHS}', 'trainer.accelerator=cpu', '~logger',\n"
                  "                 'trainer.enable_progress_bar=false', 'seed=0', 'test=false']\n"
                  "    if method == 'u2net':\n"
                  "        overrides += ['data.size=[128,128]', 'data.crop_size=null']  # U2-Net's 320/288 recipe, scaled down\n"
                  "    cfg = compose_config('train', overrides, RUN_DIR / method)\n"
                  "    _, objects = train(cfg)\n"
                  "    checkpoints[method] = objects['trainer'].checkpoint_callback.best_model_path\n"
                  "checkpoints"),
    new_code_cell("from birefnet.evaluate import evaluate, PUBLISHED\n"
                  "results = {}\n"
                  "for method, ckpt in checkpoints.items():\n"
                  "    # each checkpoint is evaluated as its preprocessing card says: 128 px for the models trained here\n"
                  "    ecfg = compose_config('eval', DATA + ['trainer.accelerator=cpu', f'checkpoint={ckpt}', f'method={method}',\n"
                  "                                                'save_predictions=true', 'trainer.enable_progress_bar=false'], RUN_DIR / f'eval_{method}')\n"
                  "    for set_name, methods in evaluate(ecfg).items():\n"
                  "        results.setdefault(set_name, {}).update(methods)"),
    new_markdown_cell("## Measured here, next to the published DIS5K numbers\n\nPublished rows are quoted from the "
                      "papers (not measured here) and are only comparable on DIS5K."),
    new_code_cell("from IPython.display import Markdown, display\nfrom birefnet.reporting import metrics_table\n"
                  "table = {s: {f'{m} (measured)': v for m, v in ms.items()} for s, ms in results.items()}\n"
                  "table.update({f'{s} (published)': ms for s, ms in PUBLISHED.items() if s == 'DIS-VD'})\n"
                  "display(Markdown(metrics_table(table)))"),
    new_markdown_cell("## Qualitative comparison: image, ground truth, each method's mask and its error map"),
    new_code_cell("from birefnet.data.io import read_image, read_mask\n"
                  "root = PROJECT_ROOT / 'data' / 'sample' / 'ECSSD-TE'\n"
                  "names = ['0005', '0025', '0045', '0065']\n"
                  "methods = list(checkpoints)\n"
                  "fig, axes = plt.subplots(len(names), 2 + 2 * len(methods), figsize=(3 * (2 + 2 * len(methods)), 2.6 * len(names)))\n"
                  "for row, name in zip(axes, names):\n"
                  "    gt = read_mask(root / 'gt' / f'{name}.png')\n"
                  "    panels = [(read_image(root / 'im' / f'{name}.jpg'), name), (gt, 'ground truth')]\n"
                  "    for m in methods:\n"
                  "        pred = read_mask(RUN_DIR / f'eval_{m}' / 'predictions' / m / 'ECSSD-TE' / f'{name}.png')\n"
                  "        panels += [(pred, m), (np.abs(pred.astype(int) - gt.astype(int)), f'{m} |error|')]\n"
                  "    for ax, (pic, title) in zip(row, panels):\n"
                  "        ax.imshow(pic, cmap='gray' if pic.ndim == 2 else None, vmin=0, vmax=255); ax.set_title(title); ax.axis('off')\n"
                  "plt.tight_layout()"),
    new_markdown_cell("## Background removal with the predict tool"),
    new_code_cell("from birefnet.predict import Predictor, collect_inputs\n"
                  "predictor = Predictor(checkpoints['birefnet'])  # size and normalisation from the model's card\n"
                  "summary = predictor.run(collect_inputs([str(root / 'im' / '0045.jpg')]), RUN_DIR / 'cutouts',\n"
                  "                        ['cutout', 'composite'], background='40,120,200', refine=True, progress=False)\n"
                  "print(summary.line())\n"
                  "fig, axes = plt.subplots(1, 3, figsize=(13, 4))\n"
                  "for ax, pic, title in zip(axes, [read_image(root / 'im' / '0045.jpg'), plt.imread(RUN_DIR / 'cutouts' / '0045_cutout.png'),\n"
                  "                                 plt.imread(RUN_DIR / 'cutouts' / '0045_composite.png')], ['input', 'RGBA cutout', 'composite']):\n"
                  "    ax.imshow(pic); ax.set_title(title); ax.axis('off')\n"
                  "plt.tight_layout()"),
]

NOTEBOOKS = {"01_data.ipynb": NB1, "02_train_and_evaluate.ipynb": NB2, "03_compare_baselines.ipynb": NB3}


_TMP_RUN = re.compile(r"/tmp/birefnet_nb\d\d_\w+")


def _clean_text(text: str) -> str:
    """Outputs as a reader should see them: no library warnings, no paths of the machine that ran them."""
    lines, skip_source = [], False
    for line in text.splitlines(keepends=True):
        if skip_source and line.startswith((" ", "\t")):
            continue  # the source line Python prints under a warning
        skip_source = "site-packages/" in line and ("Warning" in line or "deprecated" in line or "overridden" in line)
        if not skip_source and not line.startswith("💡 Tip:"):  # Lightning's advertisements
            lines.append(line)
    text = "".join(lines)
    return _TMP_RUN.sub("<run dir>", text.replace(str(HERE.parent), "<repo>"))


def _clean(nb) -> None:
    for cell in nb.cells:
        outputs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                out["text"] = _clean_text(out["text"])
                if not out["text"].strip():
                    continue
            for kind, value in out.get("data", {}).items():
                if kind.startswith("text/") and isinstance(value, str):
                    out["data"][kind] = _clean_text(value)
            outputs.append(out)
        if cell.cell_type == "code":
            cell.outputs = outputs


def build(execute: bool = False) -> None:
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                "language": "python"}})
        if execute:
            from nbclient import NotebookClient

            NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
            _clean(nb)
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    build(execute="--execute" in sys.argv)
