"""Comparing recorded settings: a config dataclass read back from ``run.json`` and the settings a
record and a request differ in (what a resume or a study checks before reusing a run)."""

from __future__ import annotations

import dataclasses

from longtail.errors import LongtailError


def from_record(cls, record: dict):
    """The config dataclass ``cls`` of a recorded run (``run.json``'s ``config``), which must name
    every field: a record that lacks one was not written by this version."""
    missing = sorted({f.name for f in dataclasses.fields(cls)} - set(record))
    if missing:
        raise LongtailError(f"the recorded settings lack {', '.join(missing)}")
    return cls(**record)


def config_differences(stored: dict, current) -> dict[str, tuple]:
    """``{field: (recorded, requested)}`` for every setting of ``current`` (a config dataclass)
    that the record ``stored`` (its ``asdict``) does not match; a field it lacks differs from any
    request (recorded as None)."""
    missing = object()
    return {
        name: (None if stored.get(name, missing) is missing else stored[name], value)
        for name, value in dataclasses.asdict(current).items()
        if stored.get(name, missing) != value
    }


def describe_differences(differences: dict[str, tuple]) -> str:
    return ", ".join(f"{name}: recorded {old!r}, requested {new!r}" for name, (old, new) in differences.items())
