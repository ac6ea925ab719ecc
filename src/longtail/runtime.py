"""The process a command runs in: its device and process group (``torchrun``), running an action
on every rank or on rank 0 alone so that an error on one rank stops them all, and the seeding of
each rank's random streams.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from longtail.config import TrainConfig
from longtail.errors import LongtailError

T = TypeVar("T")


def device_of(device: str, gpu_job: str | None = None) -> torch.device:
    """The device ``--device`` names: ``auto`` is cuda where there is one, else cpu; cuda without a
    CUDA device is an error. ``gpu_job``: a job meant for a GPU, said as what it is and would take on
    a CPU (``config.presets.gpu_job``): without CUDA, only ``--device cpu`` runs it (``auto`` is refused)."""
    if device == "auto" and not torch.cuda.is_available() and gpu_job is not None:
        raise LongtailError(
            f"{gpu_job}, and this machine has no CUDA device: run it where there is one, or pass --device cpu to "
            "run it here anyway"
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise LongtailError("--device cuda asked for, but no CUDA device is available")
    return torch.device(device)


@dataclass
class Runtime:
    """Device and process group of this process."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def create(cls, device: str = "auto") -> Runtime:
        device = device_of(device).type
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls(torch.device(device))
        rank = int(os.environ["RANK"])
        if device == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            torch_device = torch.device("cuda", local)
        else:
            torch_device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device == "cuda" else "gloo")
        return cls(torch_device, rank, world_size)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def all_sum(self, *values: float) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, value) -> list:
        """Every rank's ``value`` (picklable), in rank order."""
        if self.world_size == 1:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def on_all(self, action: Callable[[], T]) -> T:
        """``action()`` on every rank; when it raises a ``LongtailError`` on any rank, every rank
        raises one (the first failing rank's message), so no rank is left waiting for the others."""
        error, result = None, None
        try:
            result = action()
        except LongtailError as raised:
            error = raised
        messages = [m for m in self.gather(None if error is None else str(error)) if m is not None]
        if error is not None:
            raise error
        if messages:
            raise LongtailError(messages[0])
        return result

    def on_main(self, action: Callable[[], T]) -> T:
        """``action()`` on rank 0 alone (the one that reads and writes the run directory); every
        rank gets its result, or raises its error."""
        outcome = None
        if self.is_main:
            try:
                outcome = ("ok", action())
            except LongtailError as error:
                outcome = ("error", str(error))
        if self.world_size > 1:
            box = [outcome]
            dist.broadcast_object_list(box, src=0)
            outcome = box[0]
        kind, value = outcome
        if kind == "error":
            raise LongtailError(value)
        return value

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()


def check_distributed(config: TrainConfig, bn_mode: str, runtime: Runtime) -> None:
    """A multi-process run must be the same training as one process: an even split of the global
    batch, and BatchNorm that trains synchronised across processes (SyncBatchNorm, GPUs only)."""
    if runtime.world_size == 1:
        return
    if config.batch_size % runtime.world_size:
        raise LongtailError(
            f"--batch-size {config.batch_size} does not split evenly over {runtime.world_size} processes; "
            f"pass a multiple of {runtime.world_size} (the global batch stays what --batch-size says)"
        )
    if bn_mode != "frozen" and runtime.device.type != "cuda":
        raise LongtailError(
            f"--bn {bn_mode} trains BatchNorm, which must be synchronised across processes (SyncBatchNorm), "
            "and torch does that on GPUs only: use --bn frozen, --device cuda, or one process"
        )


def process_seed(seed: int, rank: int) -> int:
    """The seed of one process's random streams: ``seed`` itself on rank 0 (so one process draws
    what it always drew), one derived from ``(seed, rank)`` on every other rank, so the ranks'
    dropout and stochastic-depth masks differ as one process's masks differ across its batch."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def seed_everything(seed: int, deterministic: bool, rank: int = 0) -> None:
    seed = process_seed(seed, rank)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False  # cuDNN autotunes only where longtail.cudnn says
