"""DIS-layout dataset: pairing, validation of bad folders, image formats, augmentations, loaders."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from birefnet.data import DatasetValidationError, DISDataModule, DISDataset
from birefnet.data.datamodule import DynamicSizeCollate
from birefnet.data.io import read_image, read_mask
from birefnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
from birefnet.errors import ConfigError
from tests.conftest import SAMPLE


def _make_set(root: Path, name: str = "SET", n: int = 3, size: tuple[int, int] = (40, 56)) -> Path:
    (root / name / "im").mkdir(parents=True)
    (root / name / "gt").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / name / "im" / f"{i:03d}.jpg")
        Image.fromarray(((rng.random(size) > 0.5) * 255).astype(np.uint8)).save(root / name / "gt" / f"{i:03d}.png")
    return root / name


def test_sample_dataset_pairs_and_items():
    ds = DISDataset(SAMPLE, "ECSSD-TR+ECSSD-TE", eval_transform((64, 96)), keep_full_mask=True)
    assert len(ds) == 64 and ds.sets == ["ECSSD-TR", "ECSSD-TE"]
    item = ds[0]
    assert item["image"].shape == (3, 64, 96) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 64, 96) and 0 <= item["mask"].min() <= item["mask"].max() <= 1
    assert item["name"] == "0001" and item["set"] == "ECSSD-TR"
    assert tuple(item["mask_full"].shape) == tuple(item["orig_size"].tolist())


def test_image_without_mask_is_named(tmp_path):
    d = _make_set(tmp_path)
    (d / "gt" / "001.png").unlink()
    with pytest.raises(DatasetValidationError, match=r"(?s)1 problem.*001\.jpg: no mask.*skip_invalid=true"):
        DISDataset(tmp_path, "SET")


def test_mask_without_image_is_named(tmp_path):
    d = _make_set(tmp_path)
    (d / "im" / "002.jpg").unlink()
    with pytest.raises(DatasetValidationError, match=r"002\.png: mask without an image"):
        DISDataset(tmp_path, "SET")


def test_truncated_image_is_named(tmp_path):
    d = _make_set(tmp_path)
    p = d / "im" / "000.jpg"
    p.write_bytes(p.read_bytes()[:-200])
    with pytest.raises(DatasetValidationError, match=r"000\.jpg: truncated JPEG"):
        DISDataset(tmp_path, "SET")


def test_unreadable_mask_is_named(tmp_path):
    d = _make_set(tmp_path)
    (d / "gt" / "001.png").write_bytes(b"this is not a png")
    with pytest.raises(DatasetValidationError, match=r"001\.png: unreadable"):
        DISDataset(tmp_path, "SET")


def test_size_mismatch_is_named(tmp_path):
    d = _make_set(tmp_path)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(d / "gt" / "002.png")
    with pytest.raises(DatasetValidationError, match=r"002\.jpg: image is 40x56 but its mask .*002\.png is 20x20"):
        DISDataset(tmp_path, "SET")


def test_all_problems_reported_together_and_skippable(tmp_path, caplog):
    d = _make_set(tmp_path, n=5)
    (d / "gt" / "001.png").unlink()
    (d / "im" / "003.jpg").write_bytes(b"")
    with pytest.raises(DatasetValidationError, match=r"2 problem\(s\)"):
        DISDataset(tmp_path, "SET")
    with caplog.at_level("WARNING"):
        ds = DISDataset(tmp_path, "SET", skip_invalid=True)
    assert [s.name for s in ds.samples] == ["000", "002", "004"]
    assert "001.jpg" in caplog.text and "003.jpg" in caplog.text


def test_missing_and_empty_folders_say_where_they_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"NOPE[/\\]im does not exist"):
        DISDataset(tmp_path, "NOPE")
    (tmp_path / "EMPTY" / "im").mkdir(parents=True)
    (tmp_path / "EMPTY" / "gt").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No images .* found in .*EMPTY[/\\]im"):
        DISDataset(tmp_path, "EMPTY")


def test_image_formats(tmp_path):
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[:, :20] = (200, 30, 10)
    gray = Image.fromarray(rgb[..., 0])
    gray.save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((30, 40), 128, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "pal.png")
    cv2.imwrite(str(tmp_path / "deep.png"), (rgb.astype(np.uint16) * 257)[..., ::-1])
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    for name in ("gray.png", "rgba.png", "pal.png", "deep.png", "cmyk.jpg"):
        img = read_image(tmp_path / name)
        assert img.shape == (30, 40, 3) and img.dtype == np.uint8, name
    assert np.array_equal(read_image(tmp_path / "gray.png")[..., 1], rgb[..., 0])
    assert np.array_equal(read_image(tmp_path / "deep.png"), rgb)
    assert np.abs(read_image(tmp_path / "cmyk.jpg").astype(int) - rgb).max() <= 8
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgb)


def test_exif_orientation_is_applied(tmp_path):
    rgb = np.zeros((20, 60, 3), np.uint8)
    rgb[:, :10] = 255  # bright left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be rotated 90 degrees clockwise for display
    Image.fromarray(rgb).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    img = read_image(tmp_path / "rot.jpg")
    assert img.shape == (60, 20, 3)
    assert img[:10].mean() > 200 and img[-10:].mean() < 30  # the left edge is now on top


def test_soft_and_16bit_masks_keep_their_values(tmp_path):
    soft = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (4, 1))
    Image.fromarray(soft).save(tmp_path / "soft.png")
    cv2.imwrite(str(tmp_path / "deep.png"), soft.astype(np.uint16) * 257)
    assert np.array_equal(read_mask(tmp_path / "soft.png"), soft)
    assert np.array_equal(read_mask(tmp_path / "deep.png"), soft)
    out = eval_transform((4, 25))(image=np.zeros((4, 25, 3), np.uint8), mask=soft)
    assert torch.allclose(out["mask"][0], torch.from_numpy(soft / 255.0).float())


def _disk_sample(seed: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cy, cx, r = rng.integers(25, 45), rng.integers(20, 40), rng.integers(12, 20)
    yy, xx = np.mgrid[:size, :size]
    mask = (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2).astype(np.uint8) * 255
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 2] = 200
    img[mask > 0] = (255, 0, 0)
    return img, mask


def test_augmentations_keep_image_and_mask_aligned():
    pipeline = train_transform((96, 96), ["flip", "crop", "rotate", "enhance", "pepper"])
    mean, std = np.array(IMAGENET_MEAN) * 255, np.array(IMAGENET_STD) * 255
    for seed in range(40):
        img, mask = _disk_sample(seed)
        pipeline.set_random_seed(seed)
        out = pipeline(image=img, mask=mask)
        rgb = out["image"].numpy().transpose(1, 2, 0) * std + mean
        luma = rgb @ np.array([0.299, 0.587, 0.114])  # red disk is brighter than the blue background
        fg_from_image = luma > luma.mean()
        fg_from_mask = out["mask"][0].numpy() > 0.5
        agreement = (fg_from_image == fg_from_mask).mean()
        assert agreement >= 0.97, (seed, agreement)
        assert (fg_from_image == fg_from_mask[:, ::-1]).mean() < agreement  # a misalignment would show


def test_background_synthesis_keeps_foreground():
    img, mask = _disk_sample(0)
    pipeline = train_transform((96, 96), ["flip", "rotate", "enhance"], background_synthesis=True)
    for seed in range(5):
        pipeline.set_random_seed(seed)
        out = pipeline(image=img, mask=mask)
        rgb = out["image"].numpy().transpose(1, 2, 0) * np.array(IMAGENET_STD) * 255 + np.array(IMAGENET_MEAN) * 255
        fg = out["mask"][0].numpy() > 0.5
        assert np.abs(rgb[fg] - (255, 0, 0)).max() < 1.0  # foreground untouched (only the flip is kept)
        assert np.ptp(rgb[~fg], axis=0).max() < 1.0  # background is one flat colour


def test_datamodule_loaders_and_dynamic_size():
    dm = DISDataModule(
        str(SAMPLE),
        "ECSSD-TR",
        ["ECSSD-TE"],
        ["ECSSD-TE"],
        size=(64, 64),
        batch_size=4,
        eval_batch_size=3,
        num_workers=0,
        dynamic_size=[32, 96],
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    h, w = batch["image"].shape[-2:]
    assert batch["image"].shape[:2] == (4, 3) and h % 32 == 0 and w % 32 == 0 and 32 <= h <= 96
    assert batch["mask"].shape == (4, 1, h, w)
    # the reference resizes each sample from its original size with antialiasing, not the size-64 copy
    dm.augmentations = []
    dm.train_set = None
    dm.setup("fit")
    item = dm.train_set[0]
    original = read_image(dm.train_set.samples[0].image)
    assert item["image"].shape[1:] == original.shape[:2]
    random.seed(3)
    batch = DynamicSizeCollate(32, 96)([item])
    h, w = batch["image"].shape[-2:]
    expected = F.interpolate(item["image"][None], size=(h, w), mode="bilinear", antialias=True)[0]
    assert torch.allclose(batch["image"][0], expected, atol=1e-5)
    assert batch["mask"].min() >= 0 and batch["mask"].max() <= 1
    with pytest.raises(ConfigError, match="dynamic_size"):
        DISDataModule(str(SAMPLE), "ECSSD-TR", dynamic_size=[32, 96], cache_dir="cache")
    val = dm.val_dataloader()
    assert len(val) == 1
    vb = next(iter(val[0]))
    assert vb["image"].shape == (3, 3, 64, 64) and len(vb["mask_full"]) == 3 and vb["set"] == ["ECSSD-TE"] * 3


def test_large_jpeg_decodes_reduced_but_aligned(tmp_path):
    root = tmp_path / "BIG"
    (root / "im").mkdir(parents=True)
    (root / "gt").mkdir()
    img, mask = _disk_sample(3, size=96)
    big = cv2.resize(img, (1536, 1536), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(root / "im" / "a.jpg"), big[..., ::-1])
    cv2.imwrite(str(root / "gt" / "a.png"), cv2.resize(mask, (1536, 1536), interpolation=cv2.INTER_NEAREST))
    ds = DISDataset(tmp_path, "BIG", train_transform((96, 96), []), decode_min_side=96)
    assert read_image(root / "im" / "a.jpg", min_side=96).shape == (192, 192, 3)  # 1/8 decode
    item = ds[0]
    red = item["image"][0] > item["image"][2]
    assert (red == (item["mask"][0] > 0.5)).float().mean() > 0.97
    shutil.rmtree(root)


@pytest.mark.parametrize(
    "factors", [(0.5, 1.5, 0.0, 3.0), (1.5, 0.5, 2.0, 0.0), (1.0, 1.0, 1.0, 1.0), (0.8, 1.2, 0.3, 2.2)]
)
def test_color_enhance_matches_pil_image_enhance(factors):
    from PIL import ImageEnhance

    from birefnet.data.transforms import ColorEnhance

    img = read_image(SAMPLE / "ECSSD-TR" / "im" / "0002.jpg")
    b, c, col, sharp = factors
    ref = Image.fromarray(img)
    for enhancer, f in (
        (ImageEnhance.Brightness, b),
        (ImageEnhance.Contrast, c),
        (ImageEnhance.Color, col),
        (ImageEnhance.Sharpness, sharp),
    ):
        ref = enhancer(ref).enhance(f)
    ours = ColorEnhance().apply(img, brightness=b, contrast=c, color=col, sharpness=sharp)
    diff = np.abs(ours.astype(int) - np.asarray(ref).astype(int))
    assert diff.mean() < 0.1 and (diff == 0).mean() > 0.97 and diff.max() <= 3, (diff.mean(), diff.max())


def test_resize_cache_is_used_and_identical(tmp_path):
    src = SAMPLE / "ECSSD-TR"
    plain = DISDataset(SAMPLE, "ECSSD-TR", train_transform((96, 96), []), decode_min_side=96)  # as in training
    cached = DISDataset(
        SAMPLE,
        "ECSSD-TR",
        train_transform((96, 96), []),
        cache_dir=tmp_path / "cache",
        cache_size=(96, 96),
        decode_min_side=96,
    )
    first = cached[0]
    files = sorted((tmp_path / "cache" / "ECSSD-TR").glob("0001.*.png"))
    assert len(files) == 2
    again = cached[0]  # from the cache now
    ref = plain[0]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["mask"], again["mask"])
    assert torch.allclose(again["image"], ref["image"]) and torch.allclose(again["mask"], ref["mask"])
    assert src.exists()


@pytest.mark.parametrize("normalization", ["imagenet", "u2net", "isnet"])
def test_device_normalisation_equals_loader_normalisation(normalization):
    from birefnet.preprocessing import normalize

    img = read_image(SAMPLE / "ECSSD-TR" / "im" / "0003.jpg")
    mask = read_mask(SAMPLE / "ECSSD-TR" / "gt" / "0003.png")
    in_loader = eval_transform((64, 64), normalization)(image=img, mask=mask)["image"]
    raw = eval_transform((64, 64), "none")(image=img, mask=mask)["image"]
    assert raw.dtype == torch.uint8
    assert torch.allclose(normalize(raw[None], normalization)[0], in_loader, atol=1e-6)


def test_datamodule_with_device_normalisation_trains(tmp_path):
    import lightning as L

    from birefnet.lit_module import DISLitModule
    from birefnet.models import BiRefNet

    dm = DISDataModule(
        str(SAMPLE),
        "ECSSD-TR",
        ["ECSSD-TE"],
        ["ECSSD-TE"],
        size=(64, 64),
        batch_size=4,
        eval_batch_size=8,
        num_workers=0,
        normalize_on_device=True,
    )
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["image"].dtype == torch.uint8
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(DISLitModule(BiRefNet("pvt_v2_b0", decoder_attention="")), datamodule=dm)
    assert 0 < trainer.callback_metrics["val/Sm"] <= 1


def test_similar_colour_background_scales_all_channels_together():
    """The reference's hard negative: the foreground mean times one factor in [0.8, 1.2], the hue kept."""
    from birefnet.data.transforms import BackgroundColorSynthesis

    image = np.zeros((40, 40, 3), np.uint8)
    image[10:30, 10:30] = (200, 100, 50)
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 255
    synth = BackgroundColorSynthesis(p=1.0)
    similar = 0
    for seed in range(60):
        synth.set_random_seed(seed)
        color = synth.get_params_dependent_on_data({}, {"image": image, "mask": mask})["color"]
        ratios = color / np.array([200.0, 100.0, 50.0])
        if np.ptp(ratios) < 1e-5 and 0.8 <= ratios[0] <= 1.2:
            similar += 1
        elif not (color[0] == color[1] == color[2]):  # otherwise grey (40 %) or a random colour (20 %)
            assert np.ptp(ratios) > 1e-3
    assert 10 <= similar <= 40  # about 40 % of 60 draws
