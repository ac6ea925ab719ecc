"""Distributed training (``torchrun``): ranks split each global batch and together take the same step
as one process taking the whole batch; only rank 0 writes; nothing deadlocks.

Two levels:
- a simulation of two ranks calling ``train_one_epoch`` (no process group: a probe model records
  which images each rank saw and its gradient, with a zero learning rate so every step sees the
  same weights): the ranks take the same number of steps, their shares of each step together are
  exactly the single-process batch, and the mean of their gradients (what DDP's all-reduce
  computes) is the single-process gradient, also when a last batch splits unevenly;
- the real thing: ``torchrun --nproc_per_node 2 -m longtail train`` on CPU (gloo) against one
  process with the same global batch, compared on the final ``model.pt``.

(The sampler's distributed form itself, every rank taking a disjoint share of one global draw,
is tested in test_samplers.py; the torchrun run below uses Reweight, so it also checks that the
ranks' shares of the weighted draw add up to the single process's draw.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from longtail.checkpoint import TrainingState
from longtail.config import TrainConfig
from longtail.data import Arrays, Dataset, Split
from longtail.runtime import Runtime
from longtail.train import train_one_epoch
from shared_files import WEIGHTS

GLOBAL_BATCH = 16

# ---------------------------------------------------------------- two ranks, simulated


class Probe(nn.Module):
    """A linear model on the mean colour that records which images (by the index stamped in
    their first pixel) each forward pass saw, and every gradient of its weight."""

    def __init__(self, num_classes: int):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3, num_classes)
        self.seen: list[list[int]] = []
        self.grads: list[torch.Tensor] = []
        self.fc.weight.register_hook(lambda grad: self.grads.append(grad.clone()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.round(x[:, 0, 0, 0] * 255).long().tolist())
        return self.fc(x.mean(dim=(2, 3)))


class SimulatedRank(Runtime):
    """A rank without a process group: the all-reduce of the epoch metrics and the exchange of the
    epoch's finiteness check are left to the test (each rank sees its own)."""

    def all_sum(self, *values: float) -> list[float]:
        return list(values)

    def gather(self, value) -> list:
        return [value]


def _probe_dataset(size: int) -> Dataset:
    rng = np.random.default_rng(size)
    images = rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(size)  # the image's index, read back by the probe
    labels = np.minimum(np.arange(size) // 6, 9).astype(np.int64)  # long-tailed: class 9 holds the rest
    arrays = Arrays(images, labels, images[:0], labels[:0], tuple(f"c{i}" for i in range(10)), "probe", "probe")
    counts = np.bincount(labels, minlength=10).tolist()
    return Dataset(arrays, Split(np.arange(size), np.arange(0), counts, counts), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def _run_rank(dataset: Dataset, strategy: str, rank: int, world_size: int) -> Probe:
    probe = Probe(10)
    config = TrainConfig(strategy=strategy, batch_size=GLOBAL_BATCH, augment=False, seed=3, epochs=1)
    state = TrainingState(probe, torch.optim.SGD(probe.parameters(), lr=0.0), None)
    images = torch.from_numpy(dataset.arrays.x_train)
    labels = torch.from_numpy(dataset.train_labels)
    runtime = SimulatedRank(torch.device("cpu"), rank, world_size)
    # "frozen": the probe has no BatchNorm, so no step is skipped for a one-image share
    # (that BatchNorm case is tested in test_runs.py).
    train_one_epoch(state, probe, config, images, labels, dataset, "frozen", runtime)
    return probe


@pytest.mark.parametrize("strategy", ["baseline", "reweight"])
@pytest.mark.parametrize("size", [80, 83, 81], ids=["even", "uneven-tail", "tail-of-one"])
def test_two_ranks_take_the_single_process_steps(size, strategy):
    dataset = _probe_dataset(size)
    single = _run_rank(dataset, strategy, 0, 1)
    ranks = [_run_rank(dataset, strategy, rank, 2) for rank in range(2)]

    # Same number of steps on every rank, or DDP's all-reduce would wait forever. A last global
    # batch of one image cannot feed both ranks and is left out (81 = 5 x 16 + 1).
    assert len(ranks[0].seen) == len(ranks[1].seen)
    expected_steps = len(single.seen) - (1 if size % GLOBAL_BATCH == 1 else 0)
    assert len(ranks[0].seen) == expected_steps
    for step in range(expected_steps):
        together = sorted(ranks[0].seen[step] + ranks[1].seen[step])
        assert together == sorted(single.seen[step]), f"step {step}"
        assert ranks[0].seen[step] and ranks[1].seen[step]
        # DDP averages the ranks' gradients; that average must be the whole batch's gradient,
        # also for 83's last batch of 3 split 2 + 1.
        averaged = (ranks[0].grads[step] + ranks[1].grads[step]) / 2
        torch.testing.assert_close(averaged, single.grads[step], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- torchrun on CPU

# The driver runs ``longtail`` unchanged except for two things. Dropout (the classifier's) and
# stochastic depth (the MBConv blocks') are set to p = 0: they draw random masks per process, and
# two ranks cannot draw the masks one process draws for the whole batch, so with them on the
# runs differ by construction. And an audit hook records every file each process opens for
# writing, to check that only rank 0 writes the run directory.
DRIVER = """
import atexit, json, os, sys
from torch import nn
from torchvision.ops import StochasticDepth
import longtail.train as train_module
from longtail.cli import main

writes = []

def audit(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        if args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND):
            writes.append(os.path.abspath(os.fsdecode(args[0])))

sys.addaudithook(audit)
log = os.path.join(os.environ["WRITES_LOG_DIR"], "writes-rank" + os.environ.get("RANK", "single") + ".json")
atexit.register(lambda: open(log, "w").write(json.dumps(list(writes))))
build_model = train_module.build_model

def build_model_without_dropout(*args, **kwargs):
    model, info = build_model(*args, **kwargs)
    for module in model.modules():
        if isinstance(module, (nn.Dropout, StochasticDepth)):
            module.p = 0.0
    return model, info

train_module.build_model = build_model_without_dropout
sys.exit(main(sys.argv[1:]))
"""

# Tolerances for the final weights, one process vs two (measured: 9e-5 relative, 4.3e-5 max).
# Why they are not bit-identical: each rank's mean loss over 8 images, all-reduced and halved,
# is the mean over the 16 in another floating-point summation order; BatchNorm is frozen (the
# shared weights have folded BN), so batch statistics play no part. Adam then divides each
# gradient by its own running magnitude, so for a coordinate whose gradient is as small as the
# rounding noise a step can differ by up to one learning rate (1e-4) -- only the largest single
# difference shows that; the update as a whole agrees to ~1e-4 relative.
UPDATE_RTOL = 1e-3  # |(w2 - w0) - (w1 - w0)| / |w1 - w0| over the whole backbone
MAX_ABS_DIFF = 1e-4  # one Adam step at lr 1e-4 (6 steps moved weights by up to 6e-4)


@pytest.fixture(scope="module")
def lt_subset(cifar10_subset) -> Path:
    """30 train and 10 test images per class of the real CIFAR-10. With --max-per-class 12
    --imbalance 2 the long-tailed set has 83 images: 5 global batches of 16 and one of 3, which
    two ranks split 2 + 1 (the uneven case)."""
    return cifar10_subset(30, 10)


def _target(name: str) -> str:
    """The file an atomic write is for: ``.model.pt.1234.tmp`` -> ``model.pt``."""
    if name.startswith(".") and name.endswith(".tmp"):
        return name[1:].rsplit(".", 2)[0]
    return name


def _flat_update(state: dict, initial: dict) -> torch.Tensor:
    keys = [k for k in initial if k in state and state[k].is_floating_point() and state[k].shape == initial[k].shape]
    assert len(keys) > 100, "the backbone's keys should match the initial weights"
    return torch.cat([(state[k].double() - initial[k].double()).flatten() for k in keys])


@pytest.mark.skipif(not dist.is_gloo_available(), reason="torch built without gloo")
@pytest.mark.parametrize("frozen_blocks", [0, 2], ids=["full-fine-tuning", "frozen-blocks"])
def test_torchrun_two_processes_match_one(tmp_path, lt_subset, weights_file, cache_dir, frozen_blocks):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    logs = {"single": tmp_path / "single-logs", "ddp": tmp_path / "ddp-logs"}
    outs = {"single": tmp_path / "single", "ddp": tmp_path / "ddp"}
    common = [
        "train",
        "--data",
        str(lt_subset),
        "--weights",
        str(weights_file),
        "--max-per-class",
        "12",
        "--imbalance",
        "2",
        "--val-per-class",
        "2",
        "--strategy",
        "reweight",
        "--epochs",
        "1",
        "--batch-size",
        str(GLOBAL_BATCH),
        "--deterministic",
        "--no-augment",  # augmentation draws from a per-rank stream
        "--device",
        "cpu",
        "--freeze-blocks",
        str(frozen_blocks),
    ]
    commands = {
        "single": [sys.executable, str(driver), *common, "--out", str(outs["single"])],
        "ddp": [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(driver),
            *common,
            "--out",
            str(outs["ddp"]),
        ],
    }
    processes = {}
    for name, command in commands.items():  # both at once: most of each run is start-up
        logs[name].mkdir()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WRITES_LOG_DIR": str(logs[name])}
        processes[name] = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {name: process.communicate(timeout=600) for name, process in processes.items()}
    for name, process in processes.items():
        stdout, stderr = results[name]
        assert process.returncode == 0, f"{name} failed:\n{stdout}\n{stderr[-4000:]}"
        assert "Traceback" not in stderr, f"{name}:\n{stderr[-4000:]}"

    # Every rank finished and only rank 0 wrote into the run directory.
    ddp = outs["ddp"].resolve()
    writes = {rank: json.loads((logs["ddp"] / f"writes-rank{rank}.json").read_text()) for rank in (0, 1)}
    assert not [path for path in writes[1] if Path(path).is_relative_to(ddp)]
    written = {_target(Path(path).relative_to(ddp).parts[0]) for path in writes[0] if Path(path).is_relative_to(ddp)}
    assert {"run.json", "checkpoint.pt", "model.pt", "metrics.json", "figures", "tensorboard"} <= written
    assert len(list((ddp / "tensorboard").iterdir())) == 1  # one SummaryWriter
    assert not list(ddp.rglob("*.tmp"))
    for out in outs.values():
        assert (out / "metrics.json").is_file() and (out / "model.pt").is_file()
    runs = {name: json.loads((out / "run.json").read_text()) for name, out in outs.items()}
    assert runs["ddp"]["world_size"] == 2 and runs["single"]["world_size"] == 1
    assert runs["ddp"]["status"] == runs["single"]["status"] == "finished"

    # The epoch's metrics were gathered from both ranks: the same 83 images, loss and accuracy.
    (single_epoch,), (ddp_epoch,) = runs["single"]["history"], runs["ddp"]["history"]
    assert ddp_epoch["loss"] == pytest.approx(single_epoch["loss"], rel=1e-5)
    assert ddp_epoch["accuracy"] == single_epoch["accuracy"]
    assert ddp_epoch["val_accuracy"] == single_epoch["val_accuracy"]

    # The final weights.
    initial = torch.load(weights_file, map_location="cpu", weights_only=True)
    single_state = torch.load(outs["single"] / "model.pt", weights_only=True)
    ddp_state = torch.load(outs["ddp"] / "model.pt", weights_only=True)
    single_update, ddp_update = _flat_update(single_state, initial), _flat_update(ddp_state, initial)
    assert single_update.abs().max() > 3 * MAX_ABS_DIFF, "training should have moved the weights"
    assert (ddp_update - single_update).norm() <= UPDATE_RTOL * single_update.norm()
    # --freeze-blocks: both keep features[0:K] at the loaded weights, bit for bit.
    frozen = [name for name in initial if name.startswith(tuple(f"features.{b}." for b in range(frozen_blocks)))]
    assert bool(frozen) == bool(frozen_blocks)
    for state in (single_state, ddp_state):
        assert all(torch.equal(state[name], initial[name]) for name in frozen)
    differences = {
        key: (ddp_state[key].double() - value.double()).abs().max().item() for key, value in single_state.items()
    }
    assert max(differences.values()) <= MAX_ABS_DIFF, sorted(differences.items(), key=lambda item: item[1])[-3:]


# ---------------------------------------------------------------- one process per rank, its own randomness


def test_every_rank_has_its_own_random_stream_and_rank_0_keeps_the_seed():
    from longtail.runtime import process_seed

    assert process_seed(7, 0) == 7  # one process draws what it always drew
    seeds = {process_seed(7, rank) for rank in range(8)}
    assert len(seeds) == 8
    assert process_seed(7, 3) == process_seed(7, 3) != process_seed(8, 3)


def test_batch_size_the_world_size_does_not_divide_is_refused():
    from longtail.errors import LongtailError
    from longtail.runtime import check_distributed

    cpu = torch.device("cpu")
    check_distributed(TrainConfig(batch_size=128), "frozen", Runtime(cpu, 0, 2))
    with pytest.raises(LongtailError, match="--batch-size 128 does not split evenly over 3 processes"):
        check_distributed(TrainConfig(batch_size=128), "frozen", Runtime(cpu, 0, 3))
    # BatchNorm that trains must be synchronised (SyncBatchNorm), which torch does on GPUs only.
    with pytest.raises(LongtailError, match="SyncBatchNorm"):
        check_distributed(TrainConfig(batch_size=128), "train", Runtime(cpu, 1, 2))


def test_resume_on_a_machine_with_fewer_gpus_restores_its_own_device_only(monkeypatch):
    from longtail import checkpoint

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(state))
    state = checkpoint.rng_state()
    # Written where 4 GPUs were visible (one state per device, the old format), resumed with 1.
    state["cuda"] = [torch.full((8,), i, dtype=torch.uint8) for i in range(4)]
    checkpoint.restore_rng_state(state)
    assert len(restored) == 1 and torch.equal(restored[0], state["cuda"][0])


def test_a_rank_the_checkpoint_has_no_state_for_is_seeded_afresh():
    from longtail.checkpoint import restore_process_rng, rng_state
    from longtail.runtime import process_seed

    torch.manual_seed(123)
    saved = [rng_state()]  # written by one process
    expected = torch.Generator().manual_seed(process_seed(0, 1)).get_state()
    restore_process_rng(saved, TrainConfig(seed=0), Runtime(torch.device("cpu"), 1, 2))
    assert torch.equal(torch.get_rng_state(), expected)


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def _ddp_train(data: Path, out: Path, *extra: str) -> list[str]:
    return _torchrun(
        "-m", "longtail", "train",
        "--data", str(data),
        "--weights", str(WEIGHTS),
        "--max-per-class", "20",
        "--imbalance", "10",
        "--val-per-class", "2",
        "--image-size", "32",
        "--test-size", "train",
        "--epochs", "3",
        "--batch-size", "8",
        "--deterministic",
        "--device", "cpu",
        "--out", str(out),
        *extra,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_gloo_available(), reason="torch built without gloo")
def test_torchrun_killed_and_resumed_ends_bit_identical(tmp_path, cifar10_subset, weights_file, cache_dir):
    import signal
    import time

    from longtail import runs

    data = cifar10_subset(40, 10)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LONGTAIL_CACHE": str(cache_dir)}
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    crashed, reference = tmp_path / "crashed", tmp_path / "reference"

    # Killed (torchrun and its workers, SIGKILL) part-way through epoch 2.
    process = subprocess.Popen(_ddp_train(data, crashed), start_new_session=True, **pipes)
    checkpoint = crashed / runs.CHECKPOINT_FILE
    deadline = time.monotonic() + 600
    while not checkpoint.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3 * runs.torch_load(checkpoint)["history"][0]["seconds"])
    # torchrun's agent and both workers: every process with the run directory on its command line.
    subprocess.run(["pkill", "-KILL", "-f", str(crashed)], check=False)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert not (crashed / "model.pt").exists()
    assert runs.torch_load(checkpoint)["epoch"] in (1, 2)

    resumed = subprocess.Popen(_ddp_train(data, crashed, "--resume"), **pipes)
    uninterrupted = subprocess.Popen(_ddp_train(data, reference), **pipes)
    for name, running in (("resumed", resumed), ("uninterrupted", uninterrupted)):
        _, stderr = running.communicate(timeout=900)
        assert running.returncode == 0, f"{name}: {stderr[-3000:]}"

    got, want = runs.torch_load(crashed / "model.pt"), runs.torch_load(reference / "model.pt")
    differing = [name for name in want if not torch.equal(got[name], want[name])]
    assert not differing, f"{len(differing)} tensors differ after resuming, e.g. {differing[:3]}"
    # Each rank's random state was saved, and the ranks' streams differ (dropout masks are not shared).
    states = runs.torch_load(reference / runs.CHECKPOINT_FILE)["rng"]
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"])

    # --overwrite of the finished run: rank 0 alone reads and clears the directory, the others wait.
    again = subprocess.run(_ddp_train(data, reference, "--overwrite", "--epochs", "1"), timeout=900, **pipes)
    assert again.returncode == 0, again.stderr[-3000:]
    assert runs.read_json(reference / runs.RUN_FILE)["config"]["epochs"] == 1


FAILING_RANK_DRIVER = """
import sys
from longtail.data import dataset as dataset_module
from longtail.cli import main
from longtail.errors import LongtailError
import os

if os.environ.get("RANK") == "1":
    def unreadable(*args, **kwargs):
        raise LongtailError("simulated unreadable data on rank 1")
    dataset_module.load_arrays = unreadable
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not dist.is_gloo_available(), reason="torch built without gloo")
def test_an_error_on_one_rank_stops_every_rank(tmp_path, tiny_npz, cache_dir):
    driver = tmp_path / "driver.py"
    driver.write_text(FAILING_RANK_DRIVER)
    out = tmp_path / "run"
    command = _torchrun(
        str(driver), "train", "--data", str(tiny_npz), "--weights", "none", "--imbalance", "2",
        "--val-per-class", "1", "--epochs", "1", "--batch-size", "4", "--bn", "frozen", "--device", "cpu",
        "--out", str(out),
    )  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LONGTAIL_CACHE": str(cache_dir)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)  # no rank left waiting
    assert done.returncode != 0
    # Both ranks stop with the one-line error (rank 0 with rank 1's message); torchrun then reports
    # the failed workers itself, with a traceback of its own, but no longtail code raised one.
    assert done.stderr.count("longtail: error: simulated unreadable data on rank 1") == 2, done.stderr
    assert "src/longtail/" not in done.stderr, done.stderr
    assert not out.exists()
