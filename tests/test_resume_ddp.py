"""Fault tolerance and multi-process training: SIGKILL + resume is exact; 2-process DDP (gloo) on CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

RUN = [
    "data.size=[64,64]",
    "data.num_workers=0",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=4",
    "trainer.deterministic=true",
    "seed=3",
    "test=false",
    "~logger",
    "data.augmentations=[flip,rotate,enhance,pepper]",
    # the fine-tune loss schedule is active in epochs 3-4, across the kill / resume boundary
    "callbacks.loss_schedule.finetune_last_epochs=-2",
]


def _train(run_dir: Path, *extra: str, wait: bool = True) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "train.py", *RUN, f"hydra.run.dir={run_dir}", *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    if wait:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    return proc


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_reaches_the_same_weights(tmp_path):
    _train(tmp_path / "full")
    reference = _weights(tmp_path / "full" / "checkpoints" / "last.ckpt")

    killed = tmp_path / "killed"
    proc = _train(killed, wait=False)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline:  # wait for the end of epoch 2, then kill inside epoch 3
        if last.exists() and torch.load(last, map_location="cpu", weights_only=True)["epoch"] >= 1:
            break
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    epoch_at_kill = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert proc.returncode == -signal.SIGKILL and epoch_at_kill < 3

    _train(tmp_path / "resumed", f"ckpt_path={last}")
    resumed = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    assert torch.load(resumed, map_location="cpu", weights_only=True)["epoch"] == 3
    final = _weights(resumed)
    assert final.keys() == reference.keys()
    for key in reference:
        assert torch.equal(final[key], reference[key]), key


@pytest.mark.slow
def test_two_process_ddp_on_cpu_writes_one_run_directory(tmp_path):
    runs = tmp_path / "logs"
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.precision=32-true",
            "trainer.sync_batchnorm=false",
            "trainer.max_epochs=2",
            "data.size=[64,64]",
            "data.num_workers=0",
            "~logger",
            f"paths.log_dir={runs}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dirs = [p for p in (runs / "train" / "runs").iterdir() if p.is_dir()]
    assert len(run_dirs) == 1, run_dirs
    ckpts = sorted(p.name for p in (run_dirs[0] / "checkpoints").iterdir())
    assert ckpts.count("last.ckpt") == 1 and len(ckpts) == 2, ckpts  # last + best, written once
    assert (run_dirs[0] / "results.json").is_file()
    assert "distributed_backend=gloo" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_ddp_evaluation_equals_single_process_without_double_counting(tmp_path):
    import json
    import shutil

    from birefnet.models import BiRefNet, save_model

    root = tmp_path / "data" / "ODD"
    for sub in ("im", "gt"):
        (root / sub).mkdir(parents=True)
    names = sorted(p.stem for p in (ROOT / "data" / "sample" / "ECSSD-TE" / "im").glob("*.jpg"))[:15]
    for n in names:  # 15 images: two processes need a padded sampler
        shutil.copy(ROOT / "data" / "sample" / "ECSSD-TE" / "im" / f"{n}.jpg", root / "im")
        shutil.copy(ROOT / "data" / "sample" / "ECSSD-TE" / "gt" / f"{n}.png", root / "gt")
    torch.manual_seed(0)
    save_model(BiRefNet("pvt_v2_b0", decoder_attention="").eval(), tmp_path / "m.safetensors")
    common = [
        "evaluate.py",
        f"checkpoint={tmp_path / 'm.safetensors'}",
        f"data.root={tmp_path / 'data'}",
        "data.test_sets=[ODD]",
        "size=[64,64]",
        "data.eval_batch_size=1",  # one image per batch in both runs: only double counting could differ
        "worst_cases=12",
        "data.num_workers=0",
        "trainer.accelerator=cpu",
    ]
    results, curves, worst = {}, {}, {}
    for name, extra in (
        ("single", []),
        ("ddp", ["trainer=ddp", "trainer.devices=2", "trainer.sync_batchnorm=false", "trainer.precision=32-true"]),
    ):
        out = tmp_path / name
        proc = subprocess.run(
            [sys.executable, *common, *extra, f"hydra.run.dir={out}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        results[name] = json.loads((out / "results.json").read_text())["ODD"]["m"]
        curves[name] = json.loads((out / "curves.json").read_text())["ODD"]["m"]
        worst[name] = json.loads((out / "worst_cases.json").read_text())["ODD"]["m"]
    for key, value in results["single"].items():
        assert results["ddp"][key] == pytest.approx(value, abs=1e-6), key
    # the curves and the worst cases come from every process's images, not rank 0's share
    for key, values in curves["single"].items():
        assert curves["ddp"][key] == pytest.approx(values, abs=1e-6), key
    assert [r["name"] for r in worst["ddp"]] == [r["name"] for r in worst["single"]]
    assert len(worst["single"]) == 12  # worst_cases=12 is honoured in checkpoint mode


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_by_torchrun_share_one_run_folder_and_equal_a_single_process(tmp_path):
    """2 nodes x 1 process (two torchrun agents with node ranks 0 and 1 on this machine, gloo): one run folder
    named by the rendezvous id, checkpoints written once, test metrics equal to one process evaluating them."""
    import json

    from birefnet.evaluate import evaluate
    from tests.conftest import compose_config

    port = _free_port()
    train = [
        "train.py",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.num_nodes=2",
        "trainer.precision=32-true",
        "trainer.sync_batchnorm=false",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "data.size=[64,64]",
        "data.num_workers=0",
        "~logger",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
    nodes = [
        subprocess.Popen(
            [
                sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                f"--node-rank={rank}", "--master-addr=127.0.0.1", f"--master-port={port}", "--rdzv-id=job7", *train,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for rank in (0, 1)
    ]  # fmt: skip
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    for node, out in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, out[-3000:]
    assert "MEMBER: 2/2" in outputs[1] and "distributed_backend=gloo" in outputs[0]
    runs = list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert [p.name for p in runs] == ["torchrun-job7"]
    run = runs[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    assert (run / ".hydra").is_dir() and (run / ".hydra_rank1").is_dir()  # rank 1's files beside rank 0's
    assert (run / "train.log").is_file() and (run / "train_rank1.log").is_file()
    ddp = json.loads((run / "results.json").read_text())["ECSSD-TE"]["train"]

    cfg = compose_config("eval", tmp_path / "single", [f"checkpoint={run / 'checkpoints' / 'epoch_000.ckpt'}"])
    single = evaluate(cfg)["ECSSD-TE"]["epoch_000"]
    assert single.keys() == ddp.keys()
    for key, value in single.items():
        assert ddp[key] == pytest.approx(value, abs=1e-6), key


def test_run_name_is_the_jobs_id_under_a_launcher(monkeypatch):
    from birefnet.errors import ConfigError
    from birefnet.launch import process_index, rank_suffix, run_name

    for key in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_ID",
                "SLURM_STEP_ID", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    plain = run_name()
    assert plain == run_name() and plain.count("_") == 2 and process_index() == 0 and rank_suffix() == ""
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")  # a process Lightning's launcher started: unique, not 0
    assert process_index() == 1001 and rank_suffix() == "_rank1001"
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_PROCID", "5")
    assert run_name() == "slurm-4242.0" and process_index() == 5
    monkeypatch.setenv("SLURM_NTASKS", "1")  # one task in an allocation: runs keep their own folders
    assert run_name() == plain
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ConfigError, match="--rdzv-id"):
        run_name()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # one node: the processes share their torchrun agent
    assert run_name() == f"torchrun-{os.uname().nodename}-{os.getppid()}" and process_index() == 3
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "exp1")
    assert run_name() == "torchrun-exp1"
