"""Choosing on the validation split: ``selection.best_on_validation`` (the best score, ties by the
caller's rule, then by order) and ``metrics.top1_accuracy``, the accuracy every such choice compares."""

from __future__ import annotations

import numpy as np
import torch

from longtail.metrics import top1_accuracy
from longtail.selection import best_on_validation


def test_the_best_score_wins_whatever_the_tie_rule():
    assert best_on_validation({64: 0.70, 80: 0.75, 96: 0.74}, tie_key=lambda size: size) == 80
    assert best_on_validation({64: 0.70, 80: 0.75, 96: 0.74}, tie_key=lambda size: -size) == 80


def test_ties_go_to_the_smallest_tie_key_then_to_the_first_candidate():
    scores = {96: 0.75, 80: 0.75, 64: 0.70}
    assert best_on_validation(scores, tie_key=lambda size: size) == 80  # the smaller size
    assert best_on_validation(scores, tie_key=lambda size: (abs(size - 96), size)) == 96  # nearest 96
    assert best_on_validation(scores, tie_key=lambda size: 0) == 96  # no rule: the first
    assert best_on_validation({0: 0.5, 1: 0.5, 2: 0.5}, tie_key=lambda i: abs(i - 1.5)) == 1  # equal keys: the first


def test_top1_accuracy_of_tensor_and_array_logits():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0], [1.0, 1.0, 0.0], [0.0, 5.0, 1.0]])
    labels = np.array([0, 2, 1, 1])
    # Row 3's tie goes to the first largest logit (class 0), as argmax has it: 3 of 4 right.
    assert top1_accuracy(logits, labels) == 0.75
    assert top1_accuracy(logits.numpy(), labels) == 0.75
    assert isinstance(top1_accuracy(logits, labels), float)
