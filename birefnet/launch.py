"""What a process learns from its launcher: its rank, and the name every process of one job gives the run folder.

Lightning re-launches the script itself for several devices on one machine (it passes the run folder down).
Under torchrun or SLURM every process, on every node, starts ``train.py`` on its own and composes the config on
its own, so the run folder cannot come from the clock and the process id: it comes from the job's id, which all
of them share.
"""

from __future__ import annotations

import datetime
import os
import secrets

from birefnet.errors import ConfigError

__all__ = ["process_index", "rank_suffix", "run_name"]

_STARTED = datetime.datetime.now()
_TOKEN = f"{os.getpid():x}{secrets.token_hex(2)}"


def process_index() -> int:
    """A number unique to this process within its job, 0 for the first one: the global rank under torchrun
    (``RANK``) or srun (``SLURM_PROCID``); ``1000 * NODE_RANK + LOCAL_RANK`` for the processes Lightning's own
    launcher starts (it does not export the global rank); 0 for a plain run."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"])
    return int(env.get("NODE_RANK", 0)) * 1000 + int(env.get("LOCAL_RANK", 0))


def run_name() -> str:
    """The run folder's name, the same in every process of one job.

    - SLURM with several tasks: ``slurm-<job id>.<step id>``;
    - torchrun: ``torchrun-<rdzv id>``; on one node without ``--rdzv-id``, ``torchrun-<host>-<agent pid>``
      (the processes share their launcher); on several nodes ``--rdzv-id`` is required;
    - otherwise ``<date>_<time>_<process token>``, so runs started in the same second never share a folder.
    """
    env = os.environ
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
        return f"slurm-{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '0')}"
    if "TORCHELASTIC_RUN_ID" in env:
        rdzv = env["TORCHELASTIC_RUN_ID"]
        if rdzv and rdzv != "none":
            return f"torchrun-{rdzv}"
        if int(env.get("WORLD_SIZE", "1")) > int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", "1"))):
            raise ConfigError(
                "torchrun on several nodes: pass the same --rdzv-id=<name> on every node, so that all processes "
                "write into one run folder (logs/<task>/runs/torchrun-<name>), or set hydra.run.dir explicitly."
            )
        return f"torchrun-{os.uname().nodename}-{os.getppid()}"
    return f"{_STARTED:%Y-%m-%d_%H-%M-%S}_{_TOKEN}"


def rank_suffix() -> str:
    """``""`` for rank 0, ``"_rank<k>"`` for the others: their Hydra files and logs sit next to rank 0's."""
    index = process_index()
    return f"_rank{index}" if index else ""
