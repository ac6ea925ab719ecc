"""The cuDNN policy: which passes autotune their convolutions, and the one batch shape per input size
that inference keeps.

With ``torch.backends.cudnn.benchmark`` on, cuDNN times every candidate algorithm of every
convolution the first time it meets an input shape. For EfficientNet-B0 at 224 px on an H200 that
cost 35-45 s at a process's first training step (a bare B0: 34.8 s for step 0, 0.047 s for step 1),
and again at every new (batch, size) shape: the test-size grid, each pass's last partial batch, the
feature passes at other sizes (issue 28). The policy:

- **Training steps of a full batch autotune** (``training_step(full=True)``): thousands of steps
  share that one shape, so the search pays for itself within the run.
- **The last, partial training batch does not** (``training_step(full=False)``): at IF = 100 it is
  12,356 % 128 = 68 images, one step in 97 per epoch. Autotuning its shape would search every
  convolution again, forward and backward, for one step an epoch; cuDNN's heuristic choice for it
  costs at most that step's share of the epoch. Dropping or padding it would change the training
  (the loss of a padded batch, BatchNorm's statistics), so it runs as it is, untuned.
- **Inference never autotunes** (``inference()``: validation after every epoch, the test-size grid,
  test and feature passes, ``predict``), and every pass of more than one batch pads its last batch
  to the batch size (``padded``), so it meets one shape per input size; the padded rows' outputs
  are dropped. A single-batch pass (``predict`` on a few images) keeps its own size: padding it
  would multiply its work.

``--deterministic`` keeps its meaning: deterministic algorithms, and no autotuning anywhere (its
choice could differ from run to run). On a CPU none of this applies: cuDNN is not used there, and
the contexts change nothing that runs.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch


def _convolutions(autotune: bool) -> AbstractContextManager:
    """cuDNN's flags for a pass: autotuning on or off, everything else as the process set it
    (``longtail.runtime.seed_everything``), restored afterwards."""
    cudnn = torch.backends.cudnn
    return cudnn.flags(
        enabled=cudnn.enabled,
        benchmark=autotune and not torch.are_deterministic_algorithms_enabled(),
        benchmark_limit=cudnn.benchmark_limit,
        deterministic=cudnn.deterministic,
        allow_tf32=cudnn.allow_tf32,
    )


def training_step(full: bool) -> AbstractContextManager:
    """A training step's forward and backward: autotuned for a full batch, heuristic otherwise."""
    return _convolutions(autotune=full)


def inference() -> AbstractContextManager:
    """An inference pass: cuDNN's heuristic choice, never a search."""
    return _convolutions(autotune=False)


def padded(batch: torch.Tensor, batch_size: int, total: int) -> torch.Tensor:
    """``batch`` (the last of a pass over ``total`` images, maybe partial) padded with zero images to
    ``batch_size`` rows when the pass has more than one batch, so every batch of the pass has one
    shape; the caller keeps the first ``len(batch)`` outputs."""
    missing = batch_size - len(batch)
    if missing <= 0 or total <= batch_size:
        return batch
    return torch.cat([batch, batch.new_zeros((missing, *batch.shape[1:]))])
