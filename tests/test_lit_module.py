"""LightningModule behaviour: NaN guard, fine-tuning from official weights, EMA, fine-tune loss schedule."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from birefnet.callbacks import FinetuneLossSchedule, ema_callback
from birefnet.data import DISDataModule
from birefnet.lit_module import DISLitModule
from birefnet.models import BiRefNet, load_model
from tests.conftest import SAMPLE


def _tiny() -> BiRefNet:
    return BiRefNet("pvt_v2_b0", decoder_attention="")


def test_non_finite_loss_names_step_and_term():
    module = DISLitModule(_tiny())
    batch = {"image": torch.full((2, 3, 64, 64), float("nan")), "mask": torch.rand(2, 1, 64, 64)}
    with pytest.raises(FloatingPointError, match=r"global step 0 .*non-finite terms: \['pix/bce'"):
        module.training_step(batch, 0)


def test_init_from_official_style_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = _tiny()
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "BiRefNet-tiny.pth")
    module = DISLitModule(_tiny(), init_from=str(tmp_path / "BiRefNet-tiny.pth"))
    for k, v in source.state_dict().items():
        assert torch.equal(module.net.state_dict()[k], v), k
    with pytest.raises(ValueError, match="does not match the model"):
        DISLitModule(BiRefNet("pvt_v2_b1", decoder_attention=""), init_from=str(tmp_path / "BiRefNet-tiny.pth"))


def _fit(tmp_path, callbacks, epochs=2) -> L.Trainer:
    dm = DISDataModule(
        str(SAMPLE),
        "ECSSD-TR",
        ["ECSSD-TE"],
        ["ECSSD-TE"],
        size=(64, 64),
        batch_size=4,
        eval_batch_size=8,
        num_workers=0,
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        limit_train_batches=3,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )
    trainer.fit(DISLitModule(_tiny()), datamodule=dm)
    return trainer


def test_ema_weights_are_saved_and_loadable(tmp_path):
    assert ema_callback(None) is None
    saved = {}
    for name, extra in (("plain", []), ("ema", [ema_callback(0.5)])):
        L.seed_everything(0)
        ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / name, save_last=True)
        _fit(tmp_path / name, [*extra, ckpt])
        saved[name] = torch.load(tmp_path / name / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    # same seed, same data: only the averaging makes the saved weights differ
    weight = "net.decoder.conv_out1.0.weight"
    assert not torch.equal(saved["plain"][weight], saved["ema"][weight])
    assert load_model(tmp_path / "ema" / "last.ckpt").config["backbone"] == "pvt_v2_b0"


def test_loss_schedule_sets_weights_from_the_epoch(tmp_path):
    seen = []

    class Spy(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append(pl_module.loss_fn.weights)

    _fit(tmp_path, [FinetuneLossSchedule(epochs=3, finetune_last_epochs=-2), Spy()], epochs=3)
    assert seen[0] == {"bce": 30.0, "iou": 0.5, "ssim": 10.0}
    assert seen[1] == {"bce": 0.0, "iou": 0.25, "ssim": 10.0}
    assert seen[2] == {"bce": 0.0, "iou": 0.125, "ssim": 10.0}


def test_channels_last_gives_the_same_predictions():
    torch.manual_seed(0)
    net = _tiny().eval()
    plain = DISLitModule(net)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = plain(x).logits
        fast = DISLitModule(net, channels_last=True)
        fast.setup("validate")
        assert fast.net.decoder.conv_out1[0].weight.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(fast(x).logits, ref, atol=1e-5)
