"""Bad input, interruption and attack cases (docs/reliability.md): each one gives a clear message or the right
reading, never a traceback for a user error, a silent wrong number, a lost file or code run from a name."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from birefnet.data import DISDataModule
from birefnet.data.dataset import DatasetValidationError, find_pairs
from birefnet.data.io import ImageReadError, png_source, read_image, read_mask
from birefnet.errors import CheckpointError, ConfigError, user_error_in
from birefnet.evaluate import evaluate
from birefnet.models import BiRefNet, ISNetGTEncoder, load_model, save_model
from birefnet.models.state_dict import CONFIG_METADATA_KEY
from birefnet.predict import OutputConflictError, collect_inputs, plan_outputs
from birefnet.predict import main as predict_main
from birefnet.train import train
from tests.conftest import ROOT, SAMPLE, compose_config, reference_keys

TE = SAMPLE / "ECSSD-TE"


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0"}


# -- 1. no code runs from a name -------------------------------------------------------------------------------
def test_a_file_name_with_an_interpolation_runs_no_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose_config("eval", tmp_path, ['checkpoint=m${eval:\'open("pwned.txt","w")\'}.pth'])
    with pytest.raises(Exception, match="eval"):
        OmegaConf.to_container(cfg, resolve=True)
    assert not (tmp_path / "pwned.txt").exists()


def test_an_environment_variable_with_an_interpolation_runs_no_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROJECT_ROOT", 'x${eval:\'open("pwned_env.txt","w")\'}')
    cfg = compose_config("train", tmp_path)
    try:
        OmegaConf.to_container(cfg.paths, resolve=True)
    except Exception as err:  # an unknown resolver is an error, which is fine; running it is not
        assert "eval" in str(err)
    assert not (tmp_path / "pwned_env.txt").exists()


def test_config_resolvers_are_named_pure_functions(tmp_path):
    from birefnet.resolvers import epoch_milestones, reference_lr

    cfg = compose_config("train", tmp_path, ["data.batch_size=16", "scheduler=step", "trainer.max_epochs=100"])
    assert cfg.model.optimizer.lr == pytest.approx(reference_lr(1e-4, 16)) == pytest.approx(2e-4)
    assert list(cfg.model.scheduler.milestones) == epoch_milestones(100, 0.6, 0.85) == [60, 85]
    assert not OmegaConf.has_resolver("eval")


# -- 2. a checkpoint never chooses a download ----------------------------------------------------------------------
@pytest.fixture
def no_network(monkeypatch):
    """Any socket use fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _with_description(src: Path, dst: Path, edit) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
    description = json.loads(meta[CONFIG_METADATA_KEY])
    meta[CONFIG_METADATA_KEY] = edit(description)
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


def test_a_checkpoint_cannot_turn_on_pretrained_downloads(tmp_path, no_network, caplog):
    torch.manual_seed(0)
    model = BiRefNet("timm/resnet18", decoder_attention="", multi_scale_input="").eval()
    save_model(model, tmp_path / "clean.safetensors")

    def attack(d):
        d["backbone_kwargs"] = {
            "pretrained": True,
            "pretrained_cfg_overlay": {"url": "http://127.0.0.1:9/evil.pth"},
            "drop_path_rate": 0.0,
        }
        d["backbone_weights"] = "${eval:'1'}"
        return json.dumps(d)

    path = _with_description(tmp_path / "clean.safetensors", tmp_path / "evil.safetensors", attack)
    with caplog.at_level(logging.WARNING):
        loaded = load_model(path)
    assert "pretrained" not in loaded.config["backbone_kwargs"] and loaded.config["backbone_weights"] is None
    assert "ignoring stored backbone arguments" in caplog.text
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits)


def test_a_checkpoint_naming_a_hub_backbone_is_refused_without_network(tmp_path, no_network):
    save_model(BiRefNet("pvt_v2_b0", decoder_attention=""), tmp_path / "m.safetensors")

    def hub(d):
        d["backbone"] = "timm/hf-hub:someone/evil"
        return json.dumps(d)

    path = _with_description(tmp_path / "m.safetensors", tmp_path / "hub.safetensors", hub)
    with pytest.raises(CheckpointError, match="only a download could build"):
        load_model(path)


class _RunsCode:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(1)}, "loops": {}, "epoch": 0, "payload": _RunsCode(marker)}, path)
    return path


def _train_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "train.py", "~logger", "trainer.max_epochs=1", "data.num_workers=0", "data.size=[64,64]"]
    args += [f"hydra.run.dir={tmp_path / 'run'}", *overrides]
    return subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)


def test_a_url_checkpoint_is_refused_before_any_request(tmp_path):
    """ckpt_path=http://... (which Lightning would download and unpickle) and model.init_from=http://... are
    refused with one line; the server never sees a request and the payload never runs."""
    import http.server
    import threading

    marker = tmp_path / "pwned"
    served = tmp_path / "www"
    served.mkdir()
    _malicious_checkpoint(served / "evil.ckpt", marker)
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            requests.append(args)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/evil.ckpt"
    try:
        for override in (f"ckpt_path={url}", f"model.init_from={url}"):
            proc = _train_cli(tmp_path, override)
            assert proc.returncode == 1, proc.stderr[-2000:]
            errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
            assert len(errors) == 1 and "never fetched" in errors[0] and "Traceback" not in proc.stderr
    finally:
        server.shutdown()
    assert not requests and not marker.exists()


def test_a_malicious_local_checkpoint_is_one_line_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = _malicious_checkpoint(tmp_path / "last.ckpt", marker)
    proc = _train_cli(tmp_path, f"ckpt_path={evil}")
    assert proc.returncode == 1 and not marker.exists()
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "never unpickles" in errors[0] and "Traceback" not in proc.stderr
    assert "torch.load" not in proc.stderr  # not a pointer to torch's documentation


def test_resuming_from_a_weights_file_says_to_use_init_from(tmp_path):
    from birefnet.callbacks import read_training_checkpoint

    save_model(BiRefNet("pvt_v2_b0", decoder_attention=""), tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match="model.init_from="):
        read_training_checkpoint(tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match="is not looked up"):
        read_training_checkpoint("last")


def test_leftover_cleanup_removes_only_dead_writers_temporaries(tmp_path):
    from birefnet.atomic import remove_partials

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)
    leftover = tmp_path / f".mask.partial-{dead}-0a1b2c.png"
    running = tmp_path / f".mask.partial-{os.getpid()}-0a1b2c.png"
    users = [tmp_path / n for n in (".notes.partial-draft.txt", f".x.partial-{dead}-draft.png", "a.partial-1-abcdef")]
    users.append(tmp_path / f".y.partial-{dead}-0a1b2cX.png")
    for f in (leftover, running, *users):
        f.write_text("data")
    assert remove_partials(tmp_path) == 1
    assert not leftover.exists() and running.exists() and all(f.exists() for f in users)


def test_export_onnx_never_overwrites_its_input_or_a_user_file(tmp_path, capsys):
    from birefnet.cli import main as cli_main

    torch.manual_seed(0)
    ckpt = tmp_path / "m.safetensors"
    save_model(BiRefNet("pvt_v2_b0", decoder_attention="").eval(), ckpt)
    before = ckpt.read_bytes()
    user_graph = tmp_path / "mine.onnx"
    user_graph.write_bytes(b"a graph the user made elsewhere")
    for output, message in ((ckpt, "give the file a .onnx name"), (user_graph, "is not a graph written by")):
        with pytest.raises(SystemExit) as stop:
            cli_main(["export-onnx", "--checkpoint", str(ckpt), "--output", str(output), "--size", "64"])
        assert stop.value.code == 1 and message in capsys.readouterr().err
    assert ckpt.read_bytes() == before and user_graph.read_bytes() == b"a graph the user made elsewhere"
    ours = tmp_path / "m.onnx"
    for _ in range(2):  # its own earlier output is replaced
        assert cli_main(["export-onnx", "--checkpoint", str(ckpt), "--output", str(ours), "--size", "64"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.safetensors", "mine.onnx"]


# -- 3. an interrupted predict leaves only complete outputs ----------------------------------------------------------
KILL_DURING_THIRD_WRITE = """
import os, signal, sys
import birefnet.atomic as atomic
calls = {"n": 0}
real_fsync = os.fsync
def fsync_then_die(fd):
    calls["n"] += 1
    if calls["n"] == 3:  # the third output's bytes are in its temporary file: die before the rename
        os.kill(os.getpid(), signal.SIGKILL)
    real_fsync(fd)
atomic.os.fsync = fsync_then_die
from birefnet.predict import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_during_predict_then_rerun_leaves_complete_outputs(tiny_checkpoint_path, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    stems = ["0005", "0010", "0015", "0020", "0025"]
    for s in stems:
        shutil.copy(TE / "im" / f"{s}.jpg", folder)
    out = tmp_path / "out"
    args = [str(folder), "--checkpoint", str(tiny_checkpoint_path), "--output", str(out), "--size", "64"]
    args += ["--batch-size", "1"]
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_THIRD_WRITE, *args], env=_env(), capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    written = sorted(p.name for p in out.glob("*.png") if not p.name.startswith("."))
    assert written == ["0005.png", "0010.png"]  # the third was being written: not there, not cut
    assert [p.name for p in out.glob(".*partial*")]  # its temporary file is what the kill left
    rerun = subprocess.run(
        [sys.executable, "-m", "birefnet.predict", *args], env=_env(), capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "3 image(s)" in rerun.stderr and "2 already done" in rerun.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"{s}.png" for s in stems]  # no leftovers
    for s in stems:
        assert read_mask(out / f"{s}.png").shape == Image.open(folder / f"{s}.jpg").size[::-1]


@pytest.fixture(scope="module")
def tiny_checkpoint_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_model(BiRefNet("pvt_v2_b0", decoder_attention="").eval(), path)
    return path


# -- 4. outputs never collide or replace what is not theirs -------------------------------------------------------
def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(TE / "im" / "0005.jpg").save(path)
    return path


def test_overwrite_never_replaces_an_unrelated_file(tmp_path):
    same = tmp_path / "same2"
    photo = _image(same / "photo.jpg")
    user_png = same / "photo.png"
    Image.new("RGB", (8, 8), "red").save(user_png)
    before = user_png.read_bytes()
    inputs = collect_inputs([str(photo)], exclude=same)
    with pytest.raises(OutputConflictError, match=r"photo\.png exists and is not an output of birefnet predict"):
        plan_outputs(inputs, same, ["mask"], overwrite=True)
    assert user_png.read_bytes() == before


@pytest.mark.parametrize(
    "files, how, fix",
    [
        (["dA/x.jpg", "dB/x.jpg"], "folders", {"layout": "tree"}),
        (["a.jpg", "a.png"], "files", {"keep_extension": True}),
        (["g/a/x.jpg", "g/b/x.jpg"], "glob", {"layout": "tree"}),
    ],
)
def test_two_inputs_never_share_an_output(tmp_path, files, how, fix):
    for f in files:
        _image(tmp_path / f)
    if how == "folders":
        inputs = [str(tmp_path / Path(f).parent) for f in files]
    elif how == "files":
        inputs = [str(tmp_path / f) for f in files]
    else:
        inputs = [str(tmp_path / "g" / "**" / "*.jpg")]
    out = tmp_path / "out"
    with pytest.raises(OutputConflictError, match="would both be written to") as err:
        plan_outputs(collect_inputs(inputs, recursive=True), out, ["mask", "cutout"])
    assert "--layout tree" in str(err.value) and "--keep-extension" in str(err.value)
    layout = fix.get("layout", "relative")
    todo, _ = plan_outputs(
        collect_inputs(inputs, recursive=True, layout=layout),
        out,
        ["mask"],
        keep_extension=fix.get("keep_extension", False),
    )
    targets = [t["mask"] for _, _, t in todo]
    assert len(todo) == 2 and len(set(targets)) == 2


def test_outputs_inside_the_input_tree_are_not_inputs(tmp_path):
    folder = tmp_path / "photos"
    _image(folder / "x.jpg")
    masks = folder / "masks"
    _image(masks / "x.png")  # an earlier run's output
    found = collect_inputs([str(folder)], recursive=True, exclude=masks)
    assert [rel.as_posix() for _, rel in found] == ["x.jpg"]


# -- 5. simultaneous runs get their own folders ------------------------------------------------------------------------
@pytest.mark.slow
def test_two_evaluations_started_together_write_separate_run_folders(tmp_path):
    preds = tmp_path / "preds"
    preds.mkdir()
    shutil.copytree(TE / "gt", preds / "ECSSD-TE")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "evaluate.py"),
                f"+predictions.{name}={preds}",
                f"paths.log_dir={tmp_path / 'logs'}",
                "workers=1",
                "compare_published=false",
            ],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for name in ("first", "second")
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    runs = sorted((tmp_path / "logs" / "eval" / "runs").iterdir())
    assert len(runs) == 2
    methods = sorted(next(iter(json.loads((r / "results.json").read_text()).values())).popitem()[0] for r in runs)
    assert methods == ["first", "second"]


# -- 6-9. masks and predictions read the same everywhere --------------------------------------------------------------
@pytest.fixture
def real_mask() -> np.ndarray:
    return read_mask(TE / "gt" / "0005.png")


def test_a_01_mask_is_scaled_with_a_warning(tmp_path, real_mask, caplog):
    path = tmp_path / "m01.png"
    cv2.imwrite(str(path), (real_mask > 127).astype(np.uint8))
    with caplog.at_level(logging.WARNING):
        mask = read_mask(path)
    np.testing.assert_array_equal(mask, np.where(real_mask > 127, 255, 0))
    assert "m01.png holds a {0, 1} mask" in caplog.text


def test_16bit_masks_keep_their_values(tmp_path, real_mask):
    low, full = tmp_path / "low16.png", tmp_path / "full16.png"
    cv2.imwrite(str(low), real_mask.astype(np.uint16))  # 16-bit container, values 0..255
    cv2.imwrite(str(full), real_mask.astype(np.uint16) * 257)  # full 16-bit range
    np.testing.assert_array_equal(read_mask(low), real_mask)
    np.testing.assert_array_equal(read_mask(full), real_mask)


def test_rgba_masks_and_cutouts_are_read_from_alpha(tmp_path, real_mask):
    h, w = real_mask.shape
    black = np.dstack([np.zeros((h, w, 3), np.uint8), real_mask])
    Image.fromarray(black, "RGBA").save(tmp_path / "black_rgba.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "black_rgba.png"), real_mask)
    photo = read_image(TE / "im" / "0005.jpg")
    Image.fromarray(np.dstack([photo, real_mask]), "RGBA").save(tmp_path / "cutout.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "cutout.png"), real_mask)


def test_palette_masks(tmp_path, real_mask):
    binary = (real_mask > 127).astype(np.uint8)
    pal = Image.fromarray(binary, "P")
    pal.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)  # VOC style: index 1 is a colour
    pal.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "voc.png"), binary * 255)


def test_duplicate_stems_are_an_error_naming_both(tmp_path):
    d = tmp_path / "SET"
    shutil.copytree(TE, d)
    shutil.copy(d / "gt" / "0005.png", d / "gt" / "0005.jpg")
    shutil.copy(d / "im" / "0010.jpg", d / "im" / "0010.png")
    _, problems = find_pairs(tmp_path, "SET", check_files=False)
    text = "\n".join(problems)
    assert "gt/0005.jpg and " in text and "gt/0005.png" in text and "im/0010.jpg and " in text
    assert all("0005" not in p or "share the name" in p for p in problems)  # no second message for 0005


# -- 11-12. damaged and oversized files --------------------------------------------------------------------------------
def test_truncated_jpegs_that_still_decode_are_errors(tmp_path):
    data = (TE / "im" / "0005.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "cut_eoi.jpg").write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    for name in ("cut.jpg", "cut_eoi.jpg"):
        assert cv2.imread(str(tmp_path / name)) is not None  # OpenCV alone would use it
        with pytest.raises(ImageReadError, match=f"{name} is a damaged JPEG"):
            read_image(tmp_path / name)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\0" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [16000, 60000])
def test_decompression_bombs_are_refused_before_decoding(tmp_path, side, monkeypatch):
    bomb = _png_header_only(tmp_path / f"bomb{side}.png", side, side)
    with pytest.raises(ImageReadError, match="more than the limit"):
        read_mask(bomb)
    with pytest.raises(ImageReadError, match="more than the limit"):
        read_image(bomb)
    monkeypatch.setenv("BIREFNET_MAX_IMAGE_PIXELS", str(side * side + 1))
    if side == 16000:  # the limit is a setting: raised, the (broken) file gets as far as decoding
        with pytest.raises(ImageReadError) as err:
            read_mask(bomb)
        assert "limit" not in str(err.value)


@pytest.mark.slow
def test_predict_skips_bad_files_and_finishes_the_good_ones(tiny_checkpoint_path, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(TE / "im" / "0005.jpg", folder / "good.jpg")
    _png_header_only(folder / "bomb.png", 60000, 60000)
    data = (TE / "im" / "0010.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    code = predict_main([str(folder), "--checkpoint", str(tiny_checkpoint_path), "--output", str(out), "--size", "64"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["good.png"] and png_source(out / "good.png") == "good.jpg"


# -- 13. checkpoints that cannot be read say why --------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "tiny.safetensors"
    save_model(BiRefNet("pvt_v2_b0", decoder_attention="").eval(), path)
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: "{not json", "is not valid JSON"),
        (lambda d: json.dumps([1, 2]), "must be a JSON object"),
        (lambda d: json.dumps({**d, "wings": 2}), "argument 'wings', which BiRefNet does not take"),
        (lambda d: json.dumps({**d, "context_num": "three"}), "context_num='three'.*plain int"),
        (lambda d: json.dumps({**d, "class": "os.system"}), "names class 'os.system'"),
    ],
)
def test_bad_model_descriptions_are_named(saved_tiny, tmp_path, edit, message):
    path = _with_description(saved_tiny, tmp_path / "bad.safetensors", edit)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_empty_and_misnamed_checkpoints(saved_tiny, tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        load_model(tmp_path / "empty.pth")
    shutil.copy(saved_tiny, tmp_path / "really_safetensors.pth")  # told by content, not by name
    assert load_model(tmp_path / "really_safetensors.pth").config["backbone"] == "pvt_v2_b0"
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="not a weights file"):
        load_model(tmp_path / "text.pth")


def test_the_weights_only_refusal_is_one_whole_message(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": Path("x")}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "pickled.pth")
    text = str(err.value)
    assert text.endswith("'clean.pth').") and "never unpickles" in text and "\n" not in text


# -- 14-15. settings that cannot work stop with one message -----------------------------------------------------------
@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.max_epochs=abc", "trainer.max_epochs must be a whole number"),
        ("data.batch_size=-1", "data.batch_size must be a whole number >= 1"),
        ("data.size=[64]", r"data.size must be \[height, width\]"),
        ("data.size=[100,100]", "must be multiples of 32"),
    ],
)
def test_bad_config_values_are_config_errors(tmp_path, override, message):
    extra = [] if "max_epochs" in override else ["trainer.max_epochs=1"]
    cfg = compose_config("train", tmp_path, [override, *extra])
    with pytest.raises(Exception) as err:
        train(cfg)
    cause = user_error_in(err.value)
    assert isinstance(cause, ConfigError) and re.search(message, str(cause))


@pytest.mark.slow
def test_a_user_error_is_one_message_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "data.batch_size=-1", f"paths.log_dir={tmp_path}"],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "Error: data.batch_size must be a whole number >= 1, not -1." in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    "option, value", [("--batch-size", "0"), ("--size", "0"), ("--size", "abc"), ("--outputs", "mask,nope")]
)
def test_bad_predict_options_are_usage_errors(tmp_path, option, value, capsys):
    with pytest.raises(SystemExit) as err:
        predict_main([str(TE / "im"), "--checkpoint", "x.pth", "--output", str(tmp_path), option, value])
    assert err.value.code == 2
    stderr = capsys.readouterr().err
    assert f"argument {option}" in stderr and value in stderr and "Traceback" not in stderr


# -- 16. prediction-folder evaluation ---------------------------------------------------------------------------------
def test_an_unreadable_prediction_is_named_without_dataset_advice(tmp_path):
    preds = tmp_path / "preds" / "ECSSD-TE"
    shutil.copytree(TE / "gt", preds)
    (preds / "0010.png").write_bytes(b"not a png")
    cfg = compose_config("eval", tmp_path, [f"+predictions.mine={tmp_path / 'preds'}", "workers=1"])
    with pytest.raises(Exception) as err:
        evaluate(cfg)
    text = str(user_error_in(err.value))
    assert "0010.png: unreadable" in text and "skip_invalid" not in text and "Re-create those predictions" in text


def test_predictions_must_be_a_mapping(tmp_path):
    cfg = compose_config("eval", tmp_path, [f"predictions={tmp_path}"])
    with pytest.raises(ConfigError, match="predictions must map method names to folders"):
        evaluate(cfg)
    assert "pred_root" not in (ROOT / "configs" / "eval.yaml").read_text()


# -- 17. every set's problems at once ---------------------------------------------------------------------------
def test_problems_of_all_sets_are_reported_together(tmp_path):
    for s in ("TR", "VD"):
        shutil.copytree(TE, tmp_path / s)
    (tmp_path / "TR" / "gt" / "0005.png").unlink()
    (tmp_path / "VD" / "im" / "0010.jpg").write_bytes(b"")
    dm = DISDataModule(tmp_path, "TR", ["VD"], ["VD"], size=(64, 64), num_workers=0)
    with pytest.raises(DatasetValidationError) as err:
        dm.setup("fit")
    problems = err.value.problems
    assert any("TR/im/0005.jpg: no mask" in p for p in problems)
    assert any("VD/im/0010.jpg: empty file" in p for p in problems)


# -- loading details: GT encoder, save format, legacy patch order ---------------------------------------------
def test_gt_encoder_round_trip_through_save_and_load(tmp_path):
    torch.manual_seed(0)
    encoder = ISNetGTEncoder().eval()
    for name in ("enc.safetensors", "enc.pth"):
        save_model(encoder, tmp_path / name)
        loaded = load_model(tmp_path / name)
        assert isinstance(loaded, ISNetGTEncoder)
        x = (torch.rand(1, 1, 64, 64) > 0.5).float()
        with torch.no_grad():
            torch.testing.assert_close(loaded(x).logits, encoder(x).logits)
    plain = {k: v for k, v in encoder.state_dict().items()}  # no description: told apart from IS-Net by its keys
    torch.save(plain, tmp_path / "bare.pth")
    assert isinstance(load_model(tmp_path / "bare.pth"), ISNetGTEncoder)


def test_save_model_format_follows_the_name(saved_tiny, tmp_path):
    model = load_model(saved_tiny)
    save_model(model, tmp_path / "m.pth")
    assert (tmp_path / "m.pth").read_bytes()[:2] == b"PK"  # a torch file, read with weights_only
    raw = torch.load(tmp_path / "m.pth", weights_only=True)
    assert raw[CONFIG_METADATA_KEY]["class"] == "BiRefNet"
    assert load_model(tmp_path / "m.pth").config == model.config
    with pytest.raises(CheckpointError, match=r"name the file \.safetensors"):
        save_model(model, tmp_path / "m.weights")


@pytest.mark.slow
def test_a_legacy_layout_file_loads_with_the_legacy_patch_order(tmp_path, caplog):
    keys = reference_keys("birefnet_swin_v1_t_legacy")
    torch.manual_seed(0)
    sd = {k: torch.randn(shape) * 0.02 if shape else torch.tensor(0) for k, shape in keys.items()}
    torch.save(sd, tmp_path / "BiRefNet-legacy.pth")
    with caplog.at_level(logging.INFO):
        model = load_model(tmp_path / "BiRefNet-legacy.pth")
    assert model.config["layout"] == "legacy" and model.config["patch_order"] == "legacy"
    assert "legacy patch order" in caplog.text
    assert load_model(tmp_path / "BiRefNet-legacy.pth", patch_order="current").config["patch_order"] == "current"
