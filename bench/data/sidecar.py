"""The preprocessing sidecar: ``preprocessing.json`` in a data root written by ``bench preprocess``.

It says how the EEG files were made (profile, MVNN flavour, seeds, tool version, raw root, subjects, date), so a run on
that data root can carry it in its record and the leaderboard can flag data whitened with test statistics
(``mvnn_covariance: train+test``, the official code's choice). Data roots from elsewhere have no sidecar: None.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from bench.data.errors import DataFormatError, DataRootError
from bench.io import atomic_write_text

SIDECAR_NAME = "preprocessing.json"
SCHEMA = "thingsbench-preprocessing/1"
#: The MVNN choice that fits the noise covariance on the test recordings too.
TEST_WHITENED = "train+test"
#: What must agree for subjects to share one sidecar (everything but the subject list and the dates).
SETTINGS = ("profile", "mvnn_covariance", "mvnn_dim", "shuffle_seed", "selection_seed", "n_sessions", "reps",
            "raw_root")


def find_sidecar(folders: list[Path]) -> Path | None:
    """The first ``preprocessing.json`` in ``folders`` (a data root's search folders), or None."""
    return next((f / SIDECAR_NAME for f in folders if (f / SIDECAR_NAME).is_file()), None)


def read_sidecar(path: Path) -> dict:
    """The sidecar's contents, checked: a JSON object of this schema with a known profile and MVNN covariance."""
    from bench.data.preprocess.profiles import MVNN_COVARIANCES, PROFILES

    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{path}: unreadable preprocessing sidecar ({exc}); expected the JSON object "
                              f"`bench preprocess` writes (delete the file if it is not one)") from None
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: expected a JSON object (the preprocessing sidecar), found "
                              f"{type(data).__name__}")
    expected = {"schema": (SCHEMA,), "profile": tuple(PROFILES), "mvnn_covariance": MVNN_COVARIANCES}
    for key, allowed in expected.items():
        if data.get(key) not in allowed:
            found = repr(data[key]) if key in data else "no such key"
            raise DataFormatError(f"{path}: {key} must be one of {', '.join(allowed)}; found {found}")
    subjects = data.get("subjects")
    if not (isinstance(subjects, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in subjects)):
        raise DataFormatError(f"{path}: subjects must be a list of subject numbers; found {subjects!r}")
    return data


def sidecar_entry(settings: dict, subjects: list[int], tool: dict) -> dict:
    """A fresh sidecar for ``subjects`` made with ``settings`` (the :data:`SETTINGS` keys) by ``tool`` (its version
    and git state)."""
    return {"schema": SCHEMA, "tool": "thingsbench", **tool, **{k: settings[k] for k in SETTINGS},
            "subjects": sorted(subjects), "created_at": _now()}


def check_can_add(out: Path, settings: dict) -> None:
    """Refuse, before anything is written, to add subjects made differently to a data root that has a sidecar:
    one sidecar describes every subject in it."""
    path = Path(out) / SIDECAR_NAME
    if not path.exists():
        return
    old = read_sidecar(path)
    differ = [k for k in SETTINGS if old.get(k) != settings[k]]
    if differ:
        what = ", ".join(f"{k}: {old.get(k)!r} there, {settings[k]!r} now" for k in differ)
        raise DataRootError(f"{path}: subjects {old['subjects']} of {out} were preprocessed differently ({what}); "
                            f"choose another --out, or the same options")


def record_subjects(out: Path, settings: dict, subjects: list[int], tool: dict) -> Path:
    """Write (or extend) ``out``'s sidecar so it lists ``subjects``, atomically; call after they are written.

    Extending keeps the first invocation's tool and date and adds ``updated_at`` / ``updated_with``."""
    path = Path(out) / SIDECAR_NAME
    entry = sidecar_entry(settings, subjects, tool)
    if path.exists():
        check_can_add(out, settings)
        old = read_sidecar(path)
        entry = {**old, "subjects": sorted(set(old["subjects"]) | set(subjects)), "updated_at": entry["created_at"],
                 "updated_with": tool}
    atomic_write_text(path, json.dumps(entry, indent=1) + "\n")
    return path


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
