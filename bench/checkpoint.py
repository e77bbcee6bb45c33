"""Checkpoints of a run in progress, so that a killed run resumes exactly where it stopped.

After every finished epoch (``train.checkpoint_every``) the trainer writes, beside the run's record::

    <results-dir>/runs/.checkpoints/<spec_hash>.pt

holding everything the rest of the fit depends on: the method's weights and its own state
(:meth:`bench.method.Method.checkpoint_state`), the optimiser, the LR schedule, the generator of the epoch
permutations, every process's RNG states (torch CPU and CUDA, numpy's global, Python's ``random``), model selection and
early stopping, and the curve so far (``bench/train.py`` decides what goes in). A rerun of the same spec by the same
code resumes from it at the next epoch and ends bit for bit as an uninterrupted run would. It is deleted once the
run's completed record is written, unless ``train.keep_checkpoint`` is true.

The file is one header line (format, epoch, length and SHA-256 of the rest) followed by ``torch.save`` bytes, written
to a temporary file, fsync'ed and renamed: a reader sees a whole checkpoint or the previous one. A checkpoint whose
length or digest does not match (truncated, corrupt), or that another spec, other code or another number of
processes wrote, is named in one line and not used: the run starts from epoch 1 and overwrites it.

Under Ray Tune a trial also reports each checkpoint file to Tune (a directory holding this same file), so Tune's retry
of a trial whose process died (``bench run --max-failures N``) restores it through :func:`adopt` into the results
folder, where the rerun finds it like any other: both paths end in one file and one loader.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from bench.errors import UserError
from bench.io import atomic_path, link_or_copy

log = logging.getLogger(__name__)

FORMAT = "thingsbench-checkpoint/1"
MAGIC = b"THINGSBENCH-CHECKPOINT"
FILE_NAME = "checkpoint.pt"  # the file inside a Ray Tune checkpoint directory
_HEADER_MAX = 256


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be used; the message names the file."""


def checkpoint_path(runs_dir: str | Path, spec_hash: str) -> Path:
    """Where the checkpoint of ``spec_hash`` lives: beside the records, in a hidden folder the record readers skip."""
    return Path(runs_dir) / ".checkpoints" / f"{spec_hash}.pt"


# --- RNG states ------------------------------------------------------------------------------------------------------
def capture_rng() -> dict:
    """This process's RNG states: torch (CPU, every CUDA device), numpy's global generator, Python's ``random``.
    Numpy's key is stored as an int64 tensor so that the checkpoint loads with ``weights_only``."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "numpy": [kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": random.getstate()}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


# --- the file --------------------------------------------------------------------------------------------------------
def write_checkpoint(path: str | Path, payload: dict) -> int:
    """Atomically write ``payload`` (fsync'ed file, then rename, then the folder); returns the bytes written."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    header = (MAGIC + f" 1 epoch={int(payload.get('epoch', 0))} bytes={len(body)} "
                      f"sha256={hashlib.sha256(body).hexdigest()}\n".encode())
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(header)
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
    _fsync_dir(path.parent)  # the rename itself survives a power cut
    return len(header) + len(body)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _parse_header(line: bytes, path: Path) -> dict:
    parts = line.rstrip(b"\n").split(b" ")
    if len(parts) != 5 or parts[0] != MAGIC or parts[1] != b"1":
        raise CheckpointError(f"checkpoint {path} is not a ThingsBench checkpoint (bad header)")
    try:
        fields = dict(p.decode().split("=", 1) for p in parts[2:])
        return {"epoch": int(fields["epoch"]), "bytes": int(fields["bytes"]), "sha256": fields["sha256"]}
    except (ValueError, KeyError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {path} has an unreadable header") from None


def peek_epoch(path: str | Path) -> int | None:
    """The epoch a checkpoint file says it holds (its header only; not verified), or None if there is none."""
    try:
        with open(path, "rb") as fh:
            return _parse_header(fh.readline(_HEADER_MAX), Path(path))["epoch"]
    except (OSError, CheckpointError):
        return None


def read_checkpoint(path: str | Path) -> dict:
    """The payload of a checkpoint file, verified whole (length and SHA-256) before anything is unpickled, and
    unpickled with ``weights_only`` (tensors, numbers, strings and containers only). Raises CheckpointError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc.strerror or exc}") from None
    end = data.find(b"\n", 0, _HEADER_MAX)
    if end < 0:
        raise CheckpointError(f"checkpoint {path} is not a ThingsBench checkpoint (no header)")
    header, body = _parse_header(data[:end + 1], path), data[end + 1:]
    if len(body) != header["bytes"]:
        raise CheckpointError(f"checkpoint {path} is truncated ({len(body)} of {header['bytes']} bytes)")
    if hashlib.sha256(body).hexdigest() != header["sha256"]:
        raise CheckpointError(f"checkpoint {path} is corrupt (its SHA-256 does not match its header)")
    try:
        payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as exc:  # a digest-valid file torch cannot read: written by another version
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not of format {FORMAT}")
    return payload


# --- one run's checkpoint ------------------------------------------------------------------------------------------
@dataclass
class RunCheckpoint:
    """The checkpoint of one run: where it lives, what it must match to be resumed, and how often it is written."""

    path: Path
    spec_hash: str
    code: str            # the code fingerprint of the run (bench/code_fingerprint.py)
    label: str           # the run's label, for messages
    keep: bool = False   # train.keep_checkpoint: leave it after the run completed
    every: int = 1       # train.checkpoint_every: epochs between checkpoints (the last epoch always gets one)
    resume: bool = True  # False: start from epoch 1 whatever is there (it is overwritten)

    @classmethod
    def for_run(cls, runs_dir: str | Path, spec, code: str, resume: bool = True) -> "RunCheckpoint":
        train = spec.config.get("train", {})
        return cls(checkpoint_path(runs_dir, spec.spec_hash), spec.spec_hash, code, spec.label,
                   keep=bool(train.get("keep_checkpoint", False)), every=int(train.get("checkpoint_every", 1)),
                   resume=resume)

    def due(self, epoch: int, final: bool) -> bool:
        return final or epoch % max(1, self.every) == 0

    def stamp(self) -> dict:
        """The identity fields every payload of this run carries (checked by :meth:`load`)."""
        return {"format": FORMAT, "spec_hash": self.spec_hash, "code": self.code, "label": self.label}

    def save(self, payload: dict) -> Path:
        write_checkpoint(self.path, {**payload, **self.stamp()})
        return self.path

    def load(self, world: int) -> dict | None:
        """The payload to resume from, or None (nothing there, or a file that is not this run's, said in one line)."""
        if not self.resume or not self.path.is_file():
            return None
        try:
            payload = read_checkpoint(self.path)
        except CheckpointError as exc:
            log.warning("%s; %s starts from epoch 1", exc, self.label)
            return None
        why = self.mismatch(payload, world)
        if why:
            log.warning("checkpoint %s is %s: not used; %s starts from epoch 1", self.path, why, self.label)
            return None
        return payload

    def mismatch(self, payload: dict, world: int) -> str | None:
        if payload.get("spec_hash") != self.spec_hash:
            return f"of another run ({payload.get('spec_hash')})"
        if payload.get("code") != self.code:
            return "from other code (its code fingerprint differs)"
        if payload.get("world") != world:
            return f"from {payload.get('world')} process(es), this run has {world}"
        return None

    def discard(self) -> None:
        """The run completed: remove the checkpoint unless ``train.keep_checkpoint``."""
        if not self.keep:
            self.path.unlink(missing_ok=True)


# --- Ray Tune --------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def tune_checkpoint(path: Path | None) -> Iterator[object | None]:
    """A Ray Tune Checkpoint of a directory holding the checkpoint file ``path`` (None: none), for ``tune.report``;
    Tune persists it into its storage during the report (a hard link, :func:`bench.tune_storage.tune_storage`), after
    which the directory is removed. The directory is made beside the file, so that both links stay on one file system."""
    if path is None:
        yield None
        return
    from ray.tune import Checkpoint

    from bench.tune_storage import tune_storage

    folder = Path(tempfile.mkdtemp(prefix=".tune-", dir=path.parent))
    try:
        link_or_copy(path, folder / FILE_NAME)
        yield Checkpoint(str(folder), filesystem=tune_storage())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def tune_final_checkpoint() -> Iterator[object | None]:
    """A checkpoint holding no weights, reported with a trial's last result: Tune keeps one checkpoint per trial
    (``CheckpointConfig(num_to_keep=1)``), so this lets it delete its copy of the last epoch's weights. None when the
    trial reported no checkpoint (closed-form methods): nothing to replace."""
    from ray import tune

    if tune.get_checkpoint() is None:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))
    try:
        (folder / "ended.txt").write_text("the trial ended; its record says how\n")
        yield tune.Checkpoint.from_directory(str(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def adopt(tune_dir: str | Path, target: Path) -> bool:
    """Install the checkpoint file of a Ray Tune checkpoint directory as ``target`` (the run's results-folder
    checkpoint) when ``target`` is missing, unreadable or older; True if it was installed. Tune restores a trial that
    died from its last reported checkpoint; the trainer then finds it where it finds every checkpoint."""
    source = Path(tune_dir) / FILE_NAME
    epoch = peek_epoch(source)
    if epoch is None:
        return False  # a trial's final marker (tune_final_checkpoint), or no checkpoint file
    here = peek_epoch(target) if target.is_file() else None
    if here is not None and here >= epoch and _readable(target):
        return False
    try:
        read_checkpoint(source)
    except CheckpointError as exc:
        log.warning("%s (Ray Tune's copy): not used", exc)
        return False
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    log.warning("installed Ray Tune's checkpoint of epoch %d as %s", epoch, target)
    return True


def _readable(path: Path) -> bool:
    try:
        read_checkpoint(path)
        return True
    except CheckpointError:
        return False


def adopt_tune_checkpoint(runs_dir: str | Path, spec_hash: str) -> bool:
    """In a Ray Tune trial: adopt the checkpoint Tune restored this trial from, if any (see :func:`adopt`)."""
    from ray import tune

    restored = tune.get_checkpoint()
    if restored is None:
        return False
    with restored.as_directory() as folder:
        return adopt(folder, checkpoint_path(runs_dir, spec_hash))
