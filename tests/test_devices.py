"""What longtail does about the device it runs on (issue 28): the cuDNN policy (autotuning for full
training batches only, inference untuned with its last batch padded to one shape), the optimizer's
fused step on GPUs only, ``reproduce``'s device check (``--preset seed`` is meant for a GPU), the
GPU named in a study's environment only where one was used, and a study's wall time over its
invocations (``longtail.study.walltime``)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from longtail import cudnn, features
from longtail.config import TrainConfig
from longtail.errors import LongtailError
from longtail.features import batched_inference
from longtail.hardware import hardware_description
from longtail.optimization import make_optimizer
from longtail.runtime import Runtime
from longtail.study import reproduce, walltime

CPU = Runtime(torch.device("cpu"))
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")


# ---------------------------------------------------------------- the cuDNN policy


def test_cudnn_autotunes_full_training_batches_only_and_restores_the_flags():
    flags = torch.backends.cudnn
    before = (flags.benchmark, flags.deterministic, flags.enabled)
    with cudnn.training_step(full=True):
        assert flags.benchmark
    with cudnn.training_step(full=False):
        assert not flags.benchmark
    with cudnn.inference():
        assert not flags.benchmark
    assert (flags.benchmark, flags.deterministic, flags.enabled) == before


def test_deterministic_mode_never_autotunes():
    torch.use_deterministic_algorithms(True)
    try:
        with cudnn.training_step(full=True):
            assert not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(False)


def test_the_last_batch_of_a_pass_is_padded_with_zero_images_to_the_batch_size():
    batch = torch.full((3, 2, 2, 3), 7, dtype=torch.uint8)
    padded = cudnn.padded(batch, 8, total=11)
    assert padded.shape == (8, 2, 2, 3) and torch.equal(padded[:3], batch) and not padded[3:].any()
    assert cudnn.padded(batch, 8, total=3) is batch  # a pass of a single batch keeps its size
    assert cudnn.padded(torch.zeros(8, 2, 2, 3), 8, total=16).shape[0] == 8


@pytest.mark.parametrize("count", [10, 12, 3])
def test_inference_sees_one_shape_per_pass_and_returns_every_image_once(count):
    images = torch.randint(0, 256, (count, 8, 8, 3), dtype=torch.uint8)
    shapes = []

    def per_image_means(x: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(x.shape))
        return x.mean(dim=(1, 2, 3))[:, None]

    found = batched_inference(per_image_means, images, 8, (0.0,) * 3, (1.0,) * 3, CPU, batch_size=4)
    expected = (images.float() / 255).mean(dim=(1, 2, 3))[:, None]
    torch.testing.assert_close(found, expected)
    assert set(shapes) == {(min(count, 4), 3, 8, 8)}  # one shape, the padded rows' outputs dropped


def test_inference_copies_small_image_arrays_to_the_device_whole_and_large_ones_batch_by_batch(monkeypatch):
    elsewhere = Runtime(torch.device("meta"))  # a device other than the images' that needs no GPU
    images = torch.zeros(4, 8, 8, 3, dtype=torch.uint8)  # 768 bytes
    assert features.staged_on_device(images, elsewhere).device.type == "meta"
    monkeypatch.setattr(features, "WHOLE_COPY_BYTES", images.nbytes - 1)
    assert features.staged_on_device(images, elsewhere) is images  # left for the batches to copy


def test_the_optimizer_is_fused_only_where_the_parameters_are_on_a_gpu():
    optimizer = make_optimizer(TrainConfig(), torch.nn.Linear(3, 2).parameters())
    assert not optimizer.defaults.get("fused")


# ---------------------------------------------------------------- reproduce on a machine without CUDA


@NO_CUDA
def test_the_seed_preset_is_refused_without_cuda_unless_device_cpu_asks_for_it(tmp_path):
    out, missing = tmp_path / "study", tmp_path / "absent.npz"
    with pytest.raises(LongtailError) as refused:
        reproduce(out, preset="seed", data=str(missing), weights="none")
    assert "--preset seed" in str(refused.value) and "--device cpu" in str(refused.value)
    assert "25 hours" in str(refused.value)
    # --device cpu passes the check: the next one to fail is the data's.
    with pytest.raises(LongtailError) as later:
        reproduce(out, preset="seed", data=str(missing), weights="none", overrides={"device": "cpu"})
    assert str(missing) in str(later.value) and "--device" not in str(later.value)
    # Presets meant for CPUs need no --device.
    with pytest.raises(LongtailError, match="does not exist"):
        reproduce(out, preset="smoke", data=str(missing), weights="none")
    assert not out.exists()


@NO_CUDA
def test_device_cuda_without_cuda_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(LongtailError, match="--device cuda"):
        reproduce(tmp_path / "study", preset="smoke", data=str(tmp_path / "x.npz"), overrides={"device": "cuda"})
    assert not (tmp_path / "study").exists()


def test_the_environment_names_a_gpu_only_where_one_was_used():
    assert "gpu" not in hardware_description(torch.device("cpu"))


# ---------------------------------------------------------------- a study's wall time


def _record(out, name, start, end):
    path = out / walltime.INVOCATIONS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"start": start, "end": end, "pid": 1}))


def test_the_study_wall_time_is_the_union_of_its_invocations(tmp_path):
    assert walltime.study_wall_seconds(tmp_path) == 0.0
    _record(tmp_path, "a", 100.0, 160.0)  # cut short, resumed later
    _record(tmp_path, "b", 200.0, 230.0)
    assert walltime.study_wall_seconds(tmp_path) == 90.0
    _record(tmp_path, "c", 150.0, 210.0)  # a seed trained side by side: its overlap counts once
    _record(tmp_path, "d", 205.0, 215.0)
    assert walltime.study_wall_seconds(tmp_path) == 130.0


def test_an_invocation_keeps_its_record_up_to_date_while_it_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(walltime, "HEARTBEAT_SECONDS", 0.05)
    start = time.time()
    with walltime.Invocation(tmp_path, start) as invocation:
        (path,) = (tmp_path / walltime.INVOCATIONS_DIR).glob("*.json")
        first = json.loads(path.read_text())
        time.sleep(0.4)
        beating = json.loads(path.read_text())  # a killed invocation would leave this much behind
        seconds = invocation.finish()
    last = json.loads(path.read_text())
    assert first["start"] == beating["start"] == last["start"] == start
    assert first["end"] < beating["end"] <= last["end"] and last["end"] - start == pytest.approx(seconds)
    assert seconds >= 0.4 and walltime.study_wall_seconds(tmp_path) == pytest.approx(seconds)
