"""Run directories: atomic writes, one writer at a time, and never losing a finished run.

A run directory holds ``run.json`` (configuration, status, provenance), ``checkpoint.pt``
(everything needed to resume), ``model.pt`` (final weights), ``metrics.json``, ``figures/``
and ``tensorboard/``. Every file is written to a temporary name, flushed, fsynced and
renamed, so a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
from pathlib import Path

import torch

from longtail.errors import LongtailError

RUN_FILE = "run.json"
CHECKPOINT_FILE = "checkpoint.pt"


def short_sha256(sha256: str | None) -> str:
    """A recorded checksum as error messages name it: its first 16 hex digits (or that none was recorded)."""
    return "none recorded" if sha256 is None else f"{str(sha256)[:16]}..."


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file, flush, fsync, rename, fsync dir)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def atomic_write_json(path: Path, data) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def atomic_torch_save(path: Path, obj) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def torch_load(path: Path, mmap: bool = False) -> dict:
    """Load a longtail checkpoint or weights file (tensors and plain types only); ``mmap``: map the
    tensors from the file instead of reading them (pages are read when touched)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError as error:
        raise LongtailError(f"{path} does not exist") from error
    except Exception as error:  # truncated or foreign files raise many types
        raise LongtailError(
            f"{path}: cannot be read ({type(error).__name__}); it may be truncated: delete it and rerun that step"
        ) from error


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as error:
        raise LongtailError(f"{path} does not exist") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LongtailError(f"{path}: not valid JSON ({error}); delete it and rerun that step") from error


class RunLock:
    """An exclusive lock on a run directory, so two processes never write it at once. Held by
    another process, it is an error at once, or with ``wait`` (for short steps such as writing a
    study's results) taken as soon as the other process lets go."""

    def __init__(self, run_dir: Path, *, wait: bool = False):
        self.path = Path(run_dir) / ".lock"
        self.wait = wait
        self.handle = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a")  # never truncated: taking the lock changes no file
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            self.handle.close()
            raise LongtailError(
                f"{self.path.parent} is being written by another longtail process; wait for it "
                "to finish or use another --out"
            ) from error
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _record(run_dir: Path) -> dict | None:
    """``run_dir``'s run.json, or None; an unreadable or foreign one is an error naming it."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        return None
    record = read_json(path)
    if not isinstance(record, dict) or record.get("kind") not in ("train", "decouple"):
        raise LongtailError(
            f"{path}: not a longtail run record; it was edited or damaged: pass --overwrite to replace the run "
            "or choose another --out"
        )
    return record


def run_status(run_dir: Path) -> str:
    """``"empty"``, ``"unfinished"`` (has a checkpoint or run.json but no final model) or ``"finished"``."""
    run_dir = Path(run_dir)
    record = _record(run_dir)
    if record is not None and record.get("status") == "finished":
        return "finished"
    if record is not None or (run_dir / CHECKPOINT_FILE).exists():
        return "unfinished"
    return "empty"


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool, kind: str = "train") -> bool:
    """Check what ``run_dir`` holds against the flags, changing nothing; True when the run will resume.

    A finished run is replaced only with ``overwrite``; an unfinished one needs ``resume``
    (continue) or ``overwrite`` (start again); ``resume`` where there is no run (a mistyped
    --out) is refused. A run of another ``kind`` (stage 1 ``train`` or stage 2 ``decouple``) is
    never resumed.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise LongtailError(f"--out {run_dir} is a file, not a directory: choose another --out")
    if overwrite:
        return False
    status = run_status(run_dir)
    record = _record(run_dir)
    if record is not None and record["kind"] != kind:
        raise LongtailError(
            f"{run_dir} holds a `longtail {record['kind']}` run, not a `longtail {kind}` one: choose another --out "
            "or pass --overwrite to replace it"
        )
    if status == "finished" and not resume:
        raise LongtailError(
            f"{run_dir} already holds a finished run; pass --overwrite to replace it or choose another --out"
        )
    if status == "unfinished" and not resume:
        raise LongtailError(
            f"{run_dir} holds an unfinished run; pass --resume to continue it or --overwrite to start over"
        )
    if status == "empty" and resume:
        raise LongtailError(
            f"nothing to resume in {run_dir}: it holds no run (no {RUN_FILE} or {CHECKPOINT_FILE}); check --out, "
            "or start the run without --resume"
        )
    return status != "empty"


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool, kind: str = "train") -> bool:
    """``check_run_dir``, then empty the directory when overwriting. Call it holding the ``RunLock``."""
    resuming = check_run_dir(run_dir, resume=resume, overwrite=overwrite, kind=kind)
    if overwrite and any((Path(run_dir) / name).exists() for name in (RUN_FILE, CHECKPOINT_FILE)):
        for child in Path(run_dir).iterdir():
            if child.name != ".lock":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    return resuming
