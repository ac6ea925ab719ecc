"""Stage 2 of decoupled training (Kang et al., ICLR 2020, "Decoupling Representation and
Classifier for Long-Tailed Recognition"): heads fitted on the frozen stage-1 backbone's features.

- ``longtail.stage2.heads``: ``train_head``, the loop every trained head goes through, and the
  heads it trains (``HeadGrid``: linear heads side by side; LWS's ``ScaledLinear``);
- ``longtail.stage2.tuning``: the settings a head is chosen among on validation (``longtail.knobs``'s
  grids) and the choice;
- ``longtail.stage2.fit``: fitting the heads of several configs at once (``fit_stage2_heads``),
  at each feature size they try (``fit_at_sizes``);
- ``longtail.stage2.calibration``: the prior a stage-1 classifier or a stage-2 head is calibrated
  to, and its logits adjusted to a target prior.

The runs (run directories, the feature cache, the test metrics) are ``longtail.decouple``'s. The
public names of all four are importable from ``longtail.stage2`` itself.
"""

from longtail.stage2.calibration import adjusted_logits, head_calibration, stage1_calibration, target_adjustment
from longtail.stage2.fit import CRT, feature_sizes, fit_at_sizes, fit_stage2_heads
from longtail.stage2.heads import HeadGrid, ScaledLinear, fresh_head, linear_copy, train_head
from longtail.stage2.tuning import choose_setting, head_val_accuracy, reference_setting, tuned_record, tuning_grid

__all__ = [
    "CRT",
    "HeadGrid",
    "ScaledLinear",
    "adjusted_logits",
    "choose_setting",
    "feature_sizes",
    "fit_at_sizes",
    "fit_stage2_heads",
    "fresh_head",
    "head_calibration",
    "head_val_accuracy",
    "linear_copy",
    "reference_setting",
    "stage1_calibration",
    "target_adjustment",
    "train_head",
    "tuned_record",
    "tuning_grid",
]
