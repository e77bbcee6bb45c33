"""Integrity of a completed run record: are its headline metrics possible, and are they what its arrays give?

Records are JSON files anyone can edit. On every read (:func:`bench.records.read_record`) a completed record is
checked twice:

* **ranges**: ``top1``/``top5`` are finite percentages in [0, 100] with top-5 ≥ top-1; ``n_test`` a positive
  integer with ``chance_top1 = 100/n`` and ``chance_top5 = 100·min(5, n)/n``; ``mean_rank`` in [1, n]; every k-way
  key an integer 2 ≤ k ≤ n with percentages in range (top-5 ≥ top-1); every extra gallery's top-1/top-5 likewise.
* **arrays**: top-1, top-5, mean rank and every k-way value are recomputed from the ``similarity`` matrix of the
  record's ``.npz`` with the evaluator's own functions (:func:`bench.evaluate.rank_counts`,
  :func:`bench.evaluate.kway_accuracy`: ranking, ties by expectation) and must agree within :data:`ARRAY_TOL`.
  A record that names arrays whose file is missing or unreadable is corrupt too.

A failing record is *corrupt*: its problem is one line naming the file, e.g. ``results/runs/3f….json: top1 97.5 but
its similarity matrix gives 2.5``. This catches a hand-edited or impossible number; a forger who rewrites the
similarity matrix to match, or drops the arrays, is not caught (there is no secret to sign with) — the ranges still
hold then. See docs/run-records.md.
"""
from __future__ import annotations

import hashlib
import math
import zipfile
from pathlib import Path
from typing import Any

#: slack of the range checks, for float round-off only (a mean of probabilities ≤ 1 can exceed 1 by an ulp)
RANGE_TOL = 1e-9
#: largest difference, in percentage points, between a recorded metric and the one recomputed from the saved
#: similarity: the same functions on the same float32 matrix reproduce the number up to summation order
ARRAY_TOL = 1e-6

#: bump when what the checks accept changes: verdicts cached under another version are not trusted
CHECK_VERSION = 1
#: verdicts on arrays already checked in this process, by :func:`verdict_key`: `bench run` reads a record several
#: times (plan, claim, summary) and should load its arrays once. Sound verdicts are also kept on disk, in
#: ``runs/.verified/<spec_hash>``, so that the next process reading a results folder need not recompute k-way
#: accuracies (about 0.1 s per 200-way record).
_VERDICTS: dict[str, list[str]] = {}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if _number(value) else repr(value)


def _percent_problems(name: str, block: Any, required=("top1", "top5")) -> list[str]:
    """top1/top5 of one block (the main numbers, a k-way entry, an extra gallery): present where required, finite,
    in [0, 100], top-5 ≥ top-1."""
    if not isinstance(block, dict):
        return [f"{name} is {_fmt(block)}, not a mapping of percentages"]
    out = []
    for key in ("top1", "top5"):
        if key not in block:
            out += [f"{name}{key} is missing"] if key in required else []
        elif not _number(block[key]) or not math.isfinite(block[key]):
            out.append(f"{name}{key} {_fmt(block[key])} is not a finite number")
        elif not -RANGE_TOL <= block[key] <= 100 + RANGE_TOL:
            out.append(f"{name}{key} {block[key]!r} is outside [0, 100]")  # repr: 100.0000001 is not 100
    if not out and "top1" in block and "top5" in block and block["top5"] < block["top1"] - RANGE_TOL:
        out.append(f"{name}top5 {_fmt(block['top5'])} is below {name}top1 {_fmt(block['top1'])}")
    return out


def _chance_problems(metrics: dict, n: int) -> list[str]:
    out = []
    for key, expected in (("chance_top1", 100.0 / n), ("chance_top5", 100.0 * min(5, n) / n)):
        value = metrics.get(key)
        if value is not None and not (_number(value) and math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-9)):
            out.append(f"{key} {_fmt(value)} but n_test {n} gives {expected:.6g}")
    rank = metrics.get("mean_rank")
    if rank is not None and not (_number(rank) and 1 - RANGE_TOL <= rank <= n + RANGE_TOL):
        out.append(f"mean_rank {_fmt(rank)} is outside [1, {n}]")
    return out


def _kway_problems(kway: Any, n: int | None) -> list[str]:
    if not isinstance(kway, dict):
        return [f"kway is {_fmt(kway)}, not a mapping"]
    out = []
    for key, block in kway.items():
        k = int(key) if isinstance(key, str) and key.isdigit() else None
        if k is None or k < 2 or (n is not None and k > n):
            out.append(f"kway key {key!r} is not a k-way size between 2 and n_test ({n})")
            continue
        out += _percent_problems(f"kway {k} ", block, required=("top1",))
    return out


def metric_problems(metrics: Any) -> list[str]:
    """What is impossible about a completed record's metrics (empty: nothing)."""
    if not isinstance(metrics, dict):
        return ["metrics is not a mapping"]
    out = _percent_problems("", metrics)
    n = metrics.get("n_test")
    if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        out.append(f"n_test {_fmt(n)} is not a positive integer")
        n = None
    if n is not None:
        out += _chance_problems(metrics, n)
    if "kway" in metrics:
        out += _kway_problems(metrics["kway"], n)
    galleries = metrics.get("galleries", {})
    for name, block in (galleries.items() if isinstance(galleries, dict) else [("galleries", galleries)]):
        out += _percent_problems(f"galleries {name} ", block)
    return out


def load_similarity(npz: Path):
    """The ``similarity`` member only (an .npz is a zip read lazily: the embeddings are never decompressed)."""
    import numpy as np

    with np.load(npz, allow_pickle=False) as arrays:
        if "similarity" not in arrays.files:
            raise ValueError("it has no 'similarity' array")
        return np.asarray(arrays["similarity"])


def _disagreement(name: str, recorded: Any, lo: float, hi: float) -> str | None:
    """A recorded value outside the interval the saved matrix allows, in words (None: it agrees)."""
    if not _number(recorded) or not math.isfinite(recorded) or lo - ARRAY_TOL <= recorded <= hi + ARRAY_TOL:
        return None  # a missing or non-finite value is the range check's to name
    gives = f"{lo:.6g}" if hi - lo <= ARRAY_TOL else f"{lo:.6g} to {hi:.6g}"
    return f"{name} {_fmt(recorded)} but its similarity matrix gives {gives}"


def _bounds(counts, value, exact: float) -> tuple[float, float]:
    """(lowest, highest) value the saved matrix allows: a tie in a float32 matrix may be two float64 scores rounded
    together, so the recorded number may lie anywhere between counting the tied rows as beating the target and as
    losing to it (``exact`` counts them by expectation). Without ties (every ordinary run) both are ``exact``."""
    from bench.evaluate import RankCounts

    if not counts.tied.any():
        return exact, exact
    zero = counts.tied * 0
    lows = value(RankCounts(beaten=counts.beaten + counts.tied, tied=zero))
    highs = value(RankCounts(beaten=counts.beaten, tied=zero))
    return min(lows, highs, exact), max(lows, highs, exact)


def _checks(metrics: dict, sim, counts) -> list[tuple[str, Any, float, Any]]:
    """(name, recorded value, value recomputed by the evaluator's functions, how to compute it from other counts)."""
    from bench.evaluate import kway_accuracy, kway_hit_probability

    n = sim.shape[0]
    out = [(name, metrics.get(name), counts.topk(k), lambda c, k=k: c.topk(k)) for name, k in (("top1", 1), ("top5", 5))]
    if "mean_rank" in metrics:
        out.append(("mean_rank", metrics["mean_rank"], counts.mean_rank(), lambda c: c.mean_rank()))
    kway = metrics.get("kway")
    for key, block in (kway.items() if isinstance(kway, dict) else ()):
        if not (isinstance(key, str) and key.isdigit() and 2 <= int(key) <= n and isinstance(block, dict)):
            continue  # the range check names it
        k = int(key)
        official = kway_accuracy(sim, k)
        for m in (1, 5):
            if f"top{m}" not in block:
                continue
            value = lambda c, k=k, m=m: float(100.0 * kway_hit_probability(c, n, k, m).mean())  # noqa: E731
            exact = official[f"top{m}"] if f"top{m}" in official else value(counts)  # top-5 below 50-way: by hand
            out.append((f"kway {k} top{m}", block[f"top{m}"], exact, value))
    return out


def recomputed_problems(metrics: dict, sim) -> list[str]:
    """Recorded top-1/top-5/mean rank/k-way against those of ``sim`` (query i's target is gallery row i)."""
    import numpy as np

    from bench.evaluate import rank_counts

    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] < 1:
        return [f"its similarity matrix has shape {'×'.join(map(str, sim.shape))}, not n_test × n_test"]
    n = sim.shape[0]
    if metrics.get("n_test", n) != n:
        return [f"n_test {_fmt(metrics['n_test'])} but its similarity matrix is {n}×{n}"]
    if not np.isfinite(sim).all():
        return ["its similarity matrix holds NaN or Inf"]
    counts = rank_counts(sim, np.zeros(n, dtype=np.int64))
    found = (_disagreement(name, recorded, *_bounds(counts, value, exact))
             for name, recorded, exact, value in _checks(metrics, sim, counts))
    return [problem for problem in found if problem]


def arrays_file(data: dict, path: Path) -> Path | None:
    """The .npz a record's metrics must agree with; None where the record says none was saved (``"arrays": null``:
    a failed run, a DDP rank other than 0, a record written by hand or by a test). A record written before the field
    existed is checked against the .npz beside it when there is one."""
    if "arrays" not in data:
        legacy = path.with_suffix(".npz")
        return legacy if legacy.is_file() else None
    name = data["arrays"]
    if name is None:
        return None
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".npz"):
        raise ValueError(f"arrays {name!r} is not the name of an .npz file beside the record")
    return path.parent / name


def _scored_by_other_rules(data: dict) -> bool:
    """A record scored under another SCORING_VERSION is stale, not corrupt: today's functions need not reproduce it."""
    from bench.evaluate import SCORING_VERSION

    code = (data.get("provenance") or {}).get("code") or {}
    version = code.get("scoring_version") if isinstance(code, dict) else None
    return version is not None and version != SCORING_VERSION


def array_problems(data: dict, path: Path, npz: Path) -> list[str]:
    """The record's metrics against its saved similarity matrix (the file's problems if it cannot be read)."""
    try:
        sim = load_similarity(npz)
    except FileNotFoundError:
        return [f"its arrays {npz.name} are missing"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        return [f"its arrays {npz.name} are unreadable ({getattr(exc, 'strerror', None) or exc})"]
    if _scored_by_other_rules(data):
        return []
    return recomputed_problems(data["metrics"], sim)


def verdict_key(record_bytes: bytes, npz: Path) -> str | None:
    """What a verdict on the arrays depends on: the record's exact bytes, and the .npz's size and the CRC-32 of its
    similarity member (read from the zip's directory, without decompressing). Content, not times: a copied results
    folder keeps its verdicts; an edited record or swapped arrays do not. None: the .npz cannot be read."""
    try:
        with zipfile.ZipFile(npz) as zf:
            info = zf.getinfo("similarity.npy")
        size = npz.stat().st_size
    except (OSError, KeyError, zipfile.BadZipFile):
        return None
    digest = hashlib.sha256(record_bytes).hexdigest()[:32]
    return f"{CHECK_VERSION} {digest} {size} {info.CRC:08x} {info.file_size}"


def _verdict_file(path: Path) -> Path:
    return path.parent / ".verified" / path.stem


def _known_sound(path: Path, key: str) -> bool:
    if _VERDICTS.get(key) == []:
        return True
    try:
        return _verdict_file(path).read_text() == key
    except OSError:
        return False


def _remember(path: Path, key: str, problems: list[str]) -> None:
    """Keep the verdict for this process and, when sound, on disk for the next one (best effort: a read-only results
    folder is still read, only checked again next time)."""
    _VERDICTS[key] = problems
    if problems:
        return
    from bench.io import StorageError, atomic_write_text

    try:
        atomic_write_text(_verdict_file(path), key)
    except (OSError, StorageError):
        pass


def _array_part(data: dict, path: Path, record_bytes: bytes | None) -> list[str]:
    """The record's metrics against its arrays, through the verdict cache."""
    try:
        npz = arrays_file(data, path)
    except ValueError as exc:
        return [str(exc)]
    if npz is None:
        return []
    key = verdict_key(record_bytes, npz) if record_bytes is not None else None
    if key is None:
        return array_problems(data, path, npz)
    if key in _VERDICTS:
        return _VERDICTS[key]
    if _known_sound(path, key):
        return []
    problems = array_problems(data, path, npz)
    _remember(path, key, problems)
    return problems


def record_problem(data: dict, path: str | Path, record_bytes: bytes | None = None) -> str | None:
    """Why a parsed record is corrupt, as one line naming its file; None: it is sound (or not a completed run).

    ``record_bytes`` (the file's content) lets a verdict on the arrays be cached (:func:`verdict_key`); without it
    the arrays are checked every time."""
    if data.get("status") != "completed":
        return None
    path = Path(path)
    problems = metric_problems(data.get("metrics"))
    if isinstance(data.get("metrics"), dict):  # impossible numbers are compared too: the message says what is true
        problems += _array_part(data, path, record_bytes)
    return f"{path}: {'; '.join(problems)}" if problems else None
