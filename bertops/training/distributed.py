"""Training on several processes (DDP): which process is rank zero, how the other ranks learn what rank zero
set up, how the data is split between ranks, and how validation outputs are gathered.

Every rank runs the same `bertops train` command: Lightning's own launcher (`train.devices: N` on one machine)
starts ranks 1..N-1 by re-running it; torchrun and SLURM start all ranks at once. Only rank zero talks to MLflow,
writes the work directory and exports the model; the others train and exit.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import torch

from bertops.errors import BertopsError

LAUNCH_ENV = "BERTOPS_LAUNCH_ID"


def _srun_tasks() -> bool:
    """Started by srun as one of several tasks (SLURM variables alone also appear in a one-task allocation)."""
    return int(os.environ.get("SLURM_NTASKS", 1)) > 1


def is_rank_zero() -> bool:
    """From the launchers' environment (the process group does not exist before `trainer.fit`)."""
    if os.environ.get("RANK") is not None:  # torchrun
        return int(os.environ["RANK"]) == 0
    if os.environ.get("SLURM_PROCID") is not None and _srun_tasks():
        return int(os.environ["SLURM_PROCID"]) == 0
    # Lightning's launcher: NODE_RANK / LOCAL_RANK (neither is set in the process the user started on node 0)
    return int(os.environ.get("NODE_RANK", 0)) == 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0


def launch_id() -> str | None:
    """What all ranks of one launch share: set by bertops for Lightning's launcher (the children inherit it), by
    torchrun (--rdzv-id; --standalone draws one) or by SLURM (job and step)."""
    if os.environ.get(LAUNCH_ENV):
        return os.environ[LAUNCH_ENV]
    if os.environ.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return os.environ["TORCHELASTIC_RUN_ID"]
    if os.environ.get("SLURM_JOB_ID") and _srun_tasks():
        return f"slurm-{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '0')}"
    return None


def announce(state_file: Path, state: dict) -> None:
    """Rank zero: publish the run it set up (MLflow run id, whether it resumes) for this launch's other ranks."""
    if launch_id() is None:
        os.environ[LAUNCH_ENV] = uuid.uuid4().hex  # before trainer.fit: the ranks Lightning starts inherit it
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({**state, "launch_id": launch_id()}))
    os.replace(tmp, state_file)  # a rank that polls never reads half a file


def await_announcement(state_file: Path, timeout_s: float = 900.0) -> dict:
    """Ranks other than zero: wait for rank zero's state of this same launch (the work directory must be on a
    filesystem all ranks share, as must the project)."""
    ours = launch_id()
    if ours is None:
        raise BertopsError(f"this process is not rank zero but no launch id is set: start the ranks with Lightning "
                           f"(train.devices), torchrun or srun, or set {LAUNCH_ENV} to the same value on every node")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = json.loads(state_file.read_text())
            if state.get("launch_id") == ours:
                return state
        except (OSError, ValueError):  # not there yet, or rank zero is clearing the work directory
            pass
        time.sleep(0.5)
    raise BertopsError(f"rank zero did not set up launch {ours} in {state_file} within {timeout_s:.0f} s; is the "
                       "project on a filesystem every node shares?")


def lightning_strategy(name: str):
    """params train.strategy -> what L.Trainer(strategy=...) takes."""
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        # every trainable weight gets a gradient in every step (the strategies freeze what they do not train);
        # gradients as views of the all-reduce buckets save a copy per step
        return DDPStrategy(find_unused_parameters=False, gradient_as_bucket_view=True)
    return name


def rank_and_world(trainer) -> tuple[int, int]:
    if trainer is None:
        return 0, 1
    return trainer.global_rank, trainer.world_size


def train_sampler(sampler, trainer):
    """Each rank takes every world-size-th example of the one order all ranks draw (same seed), so that
    consecutive batch_size * world_size examples form one global step: the same batches as a single process with
    the global batch size (and length grouping still holds per rank)."""
    rank, world = rank_and_world(trainer)
    if world == 1:
        return sampler
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    return DistributedSamplerWrapper(sampler, num_replicas=world, rank=rank, shuffle=False, drop_last=False)


def eval_indices(indices: list[int], trainer) -> list[int]:
    """Evaluation: each example on exactly one rank (no padding duplicates that would count twice)."""
    rank, world = rank_and_world(trainer)
    return indices[rank::world]


def gather_objects(obj) -> list:
    """Every rank's `obj` (in rank order) when training on several processes, else [obj]."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out
