"""What one epoch of stage 1 adds up to: the loss, the training accuracy and the first step whose loss
was not finite, tallied on the device as the steps go (``Tally``: no step waits for the device), and
the epoch's summary (``EpochStats``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from longtail.errors import LongtailError
from longtail.runtime import Runtime


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    images_per_second: float
    seconds: float
    image_size: int


@dataclass
class Tally:
    """What an epoch's steps add up to, kept on the device so that adding a step never waits for it
    (no ``.item()`` per step): the loss summed over the images seen (float64, as the Python float
    it replaces), the correct predictions, and the first step whose loss was not finite (-1: none)
    with that loss. ``seen`` counts on the host: batch sizes are known there."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    bad_step: torch.Tensor
    bad_loss: torch.Tensor
    seen: int = 0

    @classmethod
    def on(cls, device: torch.device) -> Tally:
        def zero(dtype):
            return torch.zeros((), dtype=dtype, device=device)

        return cls(zero(torch.float64), zero(torch.int64), zero(torch.int64) - 1, zero(torch.float32))

    def add(self, step: int, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        loss = loss.detach()
        self.seen += len(targets)
        self.loss_sum += loss.double() * len(targets)
        self.correct += (logits.argmax(1) == targets).sum()
        first_bad = ~torch.isfinite(loss) & (self.bad_step < 0)
        self.bad_step = torch.where(first_bad, step, self.bad_step)
        self.bad_loss = torch.where(first_bad, loss.float(), self.bad_loss)

    def postfix(self, seconds: float, world_size: int) -> dict:
        """The progress bar's numbers (this waits for the device: called at the bar's refresh
        interval only)."""
        return {
            "loss": f"{self.loss_sum.item() / self.seen:.3f}",
            "acc": f"{self.correct.item() / self.seen:.3f}",
            "img_s": f"{self.seen * world_size / seconds:.0f}",
        }


def check_finite(tally: Tally, epoch: int, runtime: Runtime) -> None:
    """Stop, on every rank together, when a step's loss was NaN or infinite on any rank: checked once,
    at the epoch's end (before its checkpoint is written, so no checkpoint holds what followed), and
    naming the first such step. One exchange between ranks per epoch, none per step."""
    reports = runtime.gather((int(tally.bad_step), float(tally.bad_loss)))
    bad = [(step, loss) for step, loss in reports if step >= 0]
    if bad:
        step, loss = min(bad, key=lambda report: report[0])
        raise LongtailError(
            f"loss became {loss} at epoch {epoch + 1}, step {step + 1}; stopped with the last "
            "good checkpoint kept (a run resumes only with its own settings: start it again with a lower "
            "--lr and --overwrite, or into another --out)"
        )
