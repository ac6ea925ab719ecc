"""What ``longtail data`` reports about a data set and its split: the per-class counts of the
long-tail profile and of the training, validation and test splits, each class's frequency group,
the totals and the imbalance factor of the training counts.

A library function (the command line only prints it), so a notebook or a script gets the same
numbers as a dict of plain ints and strings.
"""

from __future__ import annotations

import numpy as np

from longtail.metrics import frequency_groups


def split_summary(dataset, grouping: str) -> dict:
    """The split table of ``dataset`` (``longtail.train.load_dataset``'s ``Dataset``), its classes
    grouped many/medium/few by ``grouping`` (``longtail.choices.GROUPINGS``).

    Returns ``{"grouping", "classes", "total", "most", "fewest", "imbalance_factor"}``: ``classes``
    one dict per class in label order (``class``, ``name``, ``profile``, ``train``, ``val``,
    ``test``, ``group``), ``total`` the sums of the four counts, ``most`` and ``fewest`` the largest
    and smallest training count and ``imbalance_factor`` their ratio.
    """
    arrays, split = dataset.arrays, dataset.split
    val = np.bincount(dataset.val_labels, minlength=arrays.num_classes)
    test = np.bincount(dataset.test_labels, minlength=arrays.num_classes)
    group_of = {c: group for group, members in frequency_groups(split.train_counts, grouping).items() for c in members}
    classes = [
        {
            "class": c,
            "name": name,
            "profile": int(split.profile_counts[c]),
            "train": int(split.train_counts[c]),
            "val": int(val[c]),
            "test": int(test[c]),
            "group": group_of[c],
        }
        for c, name in enumerate(arrays.class_names)
    ]
    most, fewest = int(max(split.train_counts)), int(min(split.train_counts))
    return {
        "grouping": grouping,
        "classes": classes,
        "total": {
            "profile": int(sum(split.profile_counts)),
            "train": int(sum(split.train_counts)),
            "val": len(split.val),
            "test": len(dataset.test_labels),
        },
        "most": most,
        "fewest": fewest,
        "imbalance_factor": most / fewest,
    }
