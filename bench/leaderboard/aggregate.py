"""Run records → one long DataFrame → the leaderboard's tables, each a pure function of the records.

Two levels of averaging, kept apart because they measure different things: seeds (optimisation noise) are averaged
within a subject first, then subjects (population variability) are averaged. A failed run contributes to the
failure counts and the completeness flag, never to a mean.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from bench.ablation import FULL_LABEL, registered_declaration
from bench.config import canonical_json
from bench.data.sidecar import TEST_WHITENED
from bench.records import COMPLETED, FAILED, RunRecord

from .errors import LeaderboardError

TIMING_COLUMNS = ("load_s", "train_s", "eval_s", "samples_per_s", "epochs_run")
#: Notes a row's flag carries besides its completeness, and what each means (the tables' footnotes say it).
NOTE_TEST_WHITENED = f"MVNN {TEST_WHITENED}"
NOTE_CODE_CHANGED = "code changed between runs"
NOTE_SYNTHETIC = "synthetic data"
#: Characters of the code fingerprint that label an entry whose runs span several code versions.
CODE_LABEL_CHARS = 6


def display_name(method: str, variant: str | None) -> str:
    return method if variant is None else f"{method}[{variant}]"


@dataclass(frozen=True)
class Grid:
    """The subjects × seeds a protocol is expected to have for every method."""

    subjects: tuple[int, ...]
    seeds: tuple[int, ...]


# --------------------------------------------------------------------------------------------------------- runs


def runs_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per run record; metrics of failed runs are dropped here so that nothing downstream can average them."""
    rows = [_run_row(rec) for rec in records]
    base_cols = ["method", "base", "variant", "protocol", "subject", "seed", "status", "spec_hash", "config_hash",
                 "top1", "top5", "n_test", "chance_top1", "chance_top5", "error", "device", "name", "code",
                 "mvnn_covariance", "ablation", "data_fingerprint", "synthetic", "test_selected", "main_gallery",
                 "similarity", *TIMING_COLUMNS]
    runs = pd.DataFrame(rows, columns=base_cols + sorted({c for r in rows for c in r} - set(base_cols), key=_kway_key))
    runs = runs.astype({"synthetic": bool, "test_selected": bool})
    runs = _split_mixed_code(_split_mixed_configs(runs))
    _reject_duplicate_cells(runs)
    return runs.sort_values(["protocol", "method", "subject", "seed"], kind="stable").reset_index(drop=True)


def _run_row(rec: RunRecord) -> dict:
    s = rec.spec
    completed = rec.status == COMPLETED
    m = rec.metrics if completed else {}
    if completed and not _is_number(m.get("top1")):
        raise LeaderboardError(f"completed run {s.label} ({rec.spec_hash}.json) has no numeric metrics.top1")
    row = {
        "method": display_name(s.method, s.variant), "base": s.method, "variant": s.variant,
        "protocol": s.protocol, "subject": int(s.subject), "seed": int(s.seed), "status": rec.status,
        "spec_hash": rec.spec_hash, "config_hash": _short_hash(s.config),
        "top1": _num(m.get("top1")), "top5": _num(m.get("top5")), "n_test": _num(m.get("n_test")),
        "chance_top1": _num(m.get("chance_top1")), "chance_top5": _num(m.get("chance_top5")),
        "error": (rec.error or {}).get("type") if rec.status == FAILED else None,
        "device": rec.provenance.get("device") if completed else None, "name": display_name(s.method, s.variant),
        "code": rec.code_fingerprint, "mvnn_covariance": _mvnn_covariance(rec.provenance),
        "ablation": canonical_json(s.ablation) if s.ablation is not None else None,  # hashable, for value_counts
        "data_fingerprint": s.data_fingerprint, "synthetic": is_synthetic(rec),
        # published protocols only: whether the paper's epoch selection looked at test scores (absent: it did not)
        "test_selected": m.get("test_selected") is True,
        "main_gallery": _text(m.get("main_gallery")), "similarity": _text(m.get("similarity")),
    }
    for k, scores in (m.get("kway") or {}).items():
        if not str(k).isdigit():
            continue  # k-way keys are gallery sizes; anything else is not a k-way score
        for key in ("top1", "top5"):
            if _is_number((scores or {}).get(key)):
                row[f"k{int(k)}_{key}"] = float(scores[key])
    for key in TIMING_COLUMNS:
        row[key] = _num(rec.timings.get(key)) if completed else math.nan
    return row


def is_synthetic(rec: RunRecord) -> bool:
    """Whether a run used synthetic EEG: its provenance says so (``data.synthetic``); a record made before that block
    existed counts as synthetic when its config names no data root (the built-in synthetic dataset), else as real."""
    block = rec.provenance.get("data") if isinstance(rec.provenance, dict) else None
    if isinstance(block, dict) and isinstance(block.get("synthetic"), bool):
        return block["synthetic"]
    data = rec.spec.config.get("data") if isinstance(rec.spec.config, dict) else None
    return not isinstance(data, dict) or data.get("root") is None


def kway_columns(runs: pd.DataFrame) -> list[str]:
    return sorted((c for c in runs.columns if c.startswith("k") and c[1:].split("_")[0].isdigit()), key=_kway_key)


def _split_mixed_configs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs of one method under different configs are different entries (``name@confighash``), never one mean."""
    runs = runs.copy()
    n_configs = runs.groupby(["method", "protocol"])["config_hash"].transform("nunique")
    mixed = n_configs > 1
    runs.loc[mixed, "method"] = runs.loc[mixed, "method"] + "@" + runs.loc[mixed, "config_hash"]
    return runs


def _split_mixed_code(runs: pd.DataFrame) -> pd.DataFrame:
    """Completed runs of one entry under several code fingerprints are one entry per fingerprint
    (``name (code 1a2b3c)``), never one mean; ``code_changed`` marks them. One fingerprint (or none recorded)
    leaves the entry as it is."""
    runs = runs.copy()
    done = runs[runs.status == COMPLETED]
    n_codes = done.groupby(["method", "protocol"])["code"].nunique(dropna=False)
    split = set(n_codes[n_codes > 1].index)
    mixed = pd.Series([(m, p) in split for m, p in zip(runs.method, runs.protocol)], index=runs.index, dtype=bool)
    runs.loc[mixed, "method"] = runs.loc[mixed, "method"] + runs.loc[mixed, "code"].map(_code_label)
    runs["code_changed"] = mixed
    return runs


def _code_label(code) -> str:
    return f" (code {str(code)[:CODE_LABEL_CHARS]})" if isinstance(code, str) and code else " (code unknown)"


def _mvnn_covariance(prov: dict) -> str | None:
    """The MVNN covariance source of the data a run used, when its data root has a preprocessing sidecar."""
    prep = prov.get("preprocessing") if isinstance(prov, dict) else None
    return prep.get("mvnn_covariance") if isinstance(prep, dict) else None


def _reject_duplicate_cells(runs: pd.DataFrame) -> None:
    dup = runs[runs.duplicated(["method", "protocol", "subject", "seed"], keep=False)]
    if len(dup):
        first = dup.iloc[0]
        same = dup[(dup.method == first.method) & (dup.protocol == first.protocol) & (dup.subject == first.subject)
                   & (dup.seed == first.seed)]
        files = ", ".join(f"{h}.json" for h in same.spec_hash)
        raise LeaderboardError(
            f"{first.method} {first.protocol} sub-{first.subject:02d} seed {first.seed} has {len(same)} records with the "
            f"same config but different data ({files}); keep one results directory per dataset")


# ----------------------------------------------------------------------------------------------------- the grid


def expected_grids(runs: pd.DataFrame, subjects: Sequence[int] | None = None,
                   seeds: Sequence[int] | None = None) -> dict[str, Grid]:
    """Per protocol, the union of subjects and seeds seen across all methods, unless the caller names them."""
    grids = {}
    for protocol, part in runs.groupby("protocol", sort=True):
        grids[protocol] = Grid(tuple(sorted(subjects)) if subjects else tuple(sorted(part.subject.unique().tolist())),
                               tuple(sorted(seeds)) if seeds is not None and len(seeds) else
                               tuple(sorted(part.seed.unique().tolist())))
    return grids


# ---------------------------------------------------------------------------------------- per subject, averaged


def subject_means(runs: pd.DataFrame, metrics: Sequence[str] = ("top1", "top5")) -> pd.DataFrame:
    """Per (method, protocol, subject): the mean and std (ddof=1) over completed seeds of each metric, and counts.

    A subject whose runs all failed keeps a row (n_seeds 0, NaN means) so that it shows as failed, not absent.
    """
    keys = ["method", "protocol", "subject"]
    done = runs[runs.status == COMPLETED]
    counts = runs.groupby(keys).agg(n_seeds=("status", lambda s: int((s == COMPLETED).sum())),
                                    n_failed=("status", lambda s: int((s == FAILED).sum())))
    stats = done.groupby(keys)[list(metrics)].agg(["mean", "std"])
    stats.columns = [f"{m}_{agg}" for m, agg in stats.columns]
    out = counts.join(stats, how="left").reset_index()
    for m in metrics:  # a metric no completed run of the group reported stays NaN rather than a missing column
        for agg in ("mean", "std"):
            if f"{m}_{agg}" not in out:
                out[f"{m}_{agg}"] = math.nan
    return out


def across_subjects(per_subject: pd.DataFrame, metrics: Sequence[str] = ("top1", "top5")) -> pd.DataFrame:
    """Per (method, protocol): the mean and std (ddof=1) over subjects of the per-subject means."""
    rows = []
    for (method, protocol), part in per_subject.groupby(["method", "protocol"], sort=False):
        ok = part[part.n_seeds > 0]
        row = {"method": method, "protocol": protocol, "n_subjects": int(len(ok)),
               "n_seeds": int(ok.n_seeds.min()) if len(ok) else 0,
               "n_seeds_max": int(ok.n_seeds.max()) if len(ok) else 0,
               "n_runs": int(part.n_seeds.sum()), "n_failed": int(part.n_failed.sum())}
        for m in metrics:
            vals = ok[f"{m}_mean"].dropna()
            row[f"{m}_mean"] = float(vals.mean()) if len(vals) else math.nan
            row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
        rows.append(row)
    cols = ["method", "protocol", "n_subjects", "n_seeds", "n_seeds_max", "n_runs", "n_failed",
            *(f"{m}_{a}" for m in metrics for a in ("mean", "std"))]
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------------------------------------- completeness


def completeness(runs: pd.DataFrame, grids: dict[str, Grid]) -> pd.DataFrame:
    """Per (method, protocol): whether every expected (subject, seed) completed, and a flag naming the gaps."""
    rows = []
    for (method, protocol), part in runs.groupby(["method", "protocol"], sort=False):
        grid = grids[protocol]
        done = set(zip(part[part.status == COMPLETED].subject, part[part.status == COMPLETED].seed))
        failed = set(zip(part[part.status == FAILED].subject, part[part.status == FAILED].seed)) - done
        expected = [(s, seed) for s in grid.subjects for seed in grid.seeds]
        missing = [c for c in expected if c not in done and c not in failed]
        failed_expected = [c for c in expected if c in failed]
        failed_extra = sorted(failed - set(expected))  # a failure outside the grid is still a failure to report
        parts = []
        if missing:
            parts.append("missing: " + describe_cells(missing, grid.seeds))
        if failed_expected or failed_extra:
            parts.append("failed: " + describe_cells(failed_expected + failed_extra, grid.seeds))
        rows.append({"method": method, "protocol": protocol, "complete": not parts,
                     "flag": "; ".join(parts) if parts else "complete", "n_missing": len(missing),
                     "n_expected": len(expected)})
    return pd.DataFrame(rows, columns=["method", "protocol", "complete", "flag", "n_missing", "n_expected"])


def entry_notes(runs: pd.DataFrame) -> dict[tuple[str, str], list[str]]:
    """Per (method, protocol), what a reader must know besides completeness: synthetic or test-whitened data among its
    completed runs, and code that changed between runs of its method (so it is one of several entries)."""
    notes: dict[tuple[str, str], list[str]] = {}
    for key, part in runs.groupby(["method", "protocol"], sort=False):
        done = part[part.status == COMPLETED]
        found = [NOTE_TEST_WHITENED] if (done.mvnn_covariance == TEST_WHITENED).any() else []
        found += [NOTE_CODE_CHANGED] if part.code_changed.any() else []
        found += [NOTE_SYNTHETIC] if done.synthetic.any() else []
        if found:
            notes[key] = found
    return notes


def describe_cells(cells: Sequence[tuple[int, int]], all_seeds: Sequence[int]) -> str:
    by_subject: dict[int, list[int]] = {}
    for subject, seed in cells:
        by_subject.setdefault(int(subject), []).append(int(seed))
    out = []
    for subject in sorted(by_subject):
        seeds = sorted(by_subject[subject])
        if len(all_seeds) > 1 and seeds == sorted(all_seeds):
            out.append(f"sub-{subject:02d} all seeds")
        else:
            out.append(f"sub-{subject:02d} seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}")
    return ", ".join(out)


# ------------------------------------------------------------------------------------------------------- tables


def summary_table(runs: pd.DataFrame, grids: dict[str, Grid]) -> pd.DataFrame:
    """One row per (method, protocol): across-subject mean ± std, counts and completeness; best top-1 first."""
    per_subject = subject_means(runs)
    summary = across_subjects(per_subject).merge(completeness(runs, grids), on=["method", "protocol"], how="left")
    if summary.empty:
        return summary
    notes = entry_notes(runs)
    summary["flag"] = ["; ".join([flag, *notes.get((m, p), [])])
                       for m, p, flag in zip(summary.method, summary.protocol, summary.flag)]
    synthetic = set(zip(runs.method[runs.synthetic], runs.protocol[runs.synthetic]))
    summary["synthetic"] = [(m, p) in synthetic for m, p in zip(summary.method, summary.protocol)]
    summary["_p"] = summary.protocol.map(protocol_rank)
    return summary.sort_values(["_p", "top1_mean", "method"], ascending=[True, False, True], na_position="last",
                               kind="stable").drop(columns="_p").reset_index(drop=True)


def protocol_rank(protocol: str) -> tuple:
    """intra before inter (the order papers report them), any other protocol after, by name."""
    return ({"intra": 0, "inter": 1}.get(protocol, 2), protocol)


def long_table(runs: pd.DataFrame, grids: dict[str, Grid], reported: pd.DataFrame | None = None) -> pd.DataFrame:
    """The CSV form: per-subject rows then an ``avg`` row for each reproduced method, then the reported rows."""
    per_subject = subject_means(runs)
    summary = summary_table(runs, grids)
    rows = []
    for _, s in summary.iterrows():
        subj = per_subject[(per_subject.method == s.method) & (per_subject.protocol == s.protocol)]
        for _, r in subj.sort_values("subject").iterrows():
            rows.append({"method": s.method, "protocol": s.protocol, "subject": str(int(r.subject)),
                         "n_seeds": int(r.n_seeds), "n_subjects": 1, "n_failed": int(r.n_failed),
                         **{c: r[c] for c in ("top1_mean", "top1_std", "top5_mean", "top5_std")},
                         "source": "reproduced", "complete": None, "flag": None, "reference": None, "caveat": None,
                         "synthetic": bool(s.synthetic)})
        rows.append({"method": s.method, "protocol": s.protocol, "subject": "avg", "n_seeds": int(s.n_seeds),
                     "n_subjects": int(s.n_subjects), "n_failed": int(s.n_failed),
                     **{c: s[c] for c in ("top1_mean", "top1_std", "top5_mean", "top5_std")},
                     "source": "reproduced", "complete": bool(s.complete), "flag": s.flag, "reference": None,
                     "caveat": None, "synthetic": bool(s.synthetic)})
    if reported is not None:
        for _, r in reported_rows(reported).iterrows():
            rows.append({**r.to_dict(), "n_seeds": None, "n_failed": None, "complete": None, "flag": None,
                         "synthetic": False})
    cols = ["method", "protocol", "subject", "n_seeds", "top1_mean", "top1_std", "top5_mean", "top5_std", "source",
            "n_subjects", "n_failed", "complete", "flag", "reference", "caveat", "synthetic"]
    out = pd.DataFrame(rows, columns=cols)
    return out.astype({"n_seeds": "Int64", "n_subjects": "Int64", "n_failed": "Int64", "complete": "boolean",
                       "synthetic": "boolean"})


def comparable_reported(reported: pd.DataFrame | None, runs: pd.DataFrame) -> pd.DataFrame | None:
    """The literature rows that may stand beside ``runs``: those of a protocol with a completed run on real
    THINGS-EEG scored against as many test images as the paper (a synthetic run, or another gallery size, measures
    something else, so a paper's number beside it would read as a comparison it is not). None when none may."""
    if reported is None:
        return None
    done = runs[(runs.status == COMPLETED) & ~runs.synthetic & runs.n_test.notna()]
    comparable = set(zip(done.protocol, done.n_test.astype(int)))
    keep = [(p, int(n)) in comparable for p, n in zip(reported.protocol, reported.n_test)]
    shown = reported[keep]
    return shown if len(shown) else None


def reported_rows(reported: pd.DataFrame) -> pd.DataFrame:
    """Reported numbers in the long layout: the paper's per-subject rows, then its average.

    The paper's own ``avg`` is used verbatim when given (papers' averages do not always equal the mean of their
    per-subject numbers); without one, the mean ± std over the reported subjects stands in.
    """
    rows = []
    for (method, protocol), part in reported.groupby(["method", "protocol"], sort=False):
        subj = part[part.subject != "avg"]
        avg = part[part.subject == "avg"]
        meta = (avg if len(avg) else part).iloc[0]
        common = {"method": method, "protocol": protocol, "source": "reported", "reference": meta.source,
                  "caveat": meta.caveat}
        for _, r in subj.sort_values("subject", key=lambda s: s.astype(int)).iterrows():
            rows.append({**common, "subject": str(r.subject), "n_subjects": 1, "top1_mean": r.top1,
                         "top1_std": math.nan, "top5_mean": r.top5, "top5_std": math.nan})
        if len(avg):
            a = avg.iloc[0]
            # The paper's average may cover subjects not listed here, so its subject count is unknown.
            rows.append({**common, "subject": "avg", "n_subjects": math.nan,
                         "top1_mean": a.top1, "top1_std": math.nan, "top5_mean": a.top5, "top5_std": math.nan})
        elif len(subj):
            rows.append({**common, "subject": "avg", "n_subjects": len(subj),
                         "top1_mean": float(subj.top1.mean()),
                         "top1_std": float(subj.top1.std(ddof=1)) if len(subj) > 1 else math.nan,
                         "top5_mean": float(subj.top5.mean()) if subj.top5.notna().all() else math.nan,
                         "top5_std": float(subj.top5.std(ddof=1)) if len(subj) > 1 and subj.top5.notna().all()
                         else math.nan})
    return pd.DataFrame(rows, columns=["method", "protocol", "subject", "n_subjects", "top1_mean", "top1_std",
                                       "top5_mean", "top5_std", "source", "reference", "caveat"])


def kway_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (method, protocol): across-subject mean ± std of every k-way score, and of the full n_test-way top-1/5."""
    cols = kway_columns(runs)
    metrics = [*cols, "top1", "top5"]
    per_subject = subject_means(runs, metrics)
    return across_subjects(per_subject, metrics)


def chance_levels(runs: pd.DataFrame) -> dict[str, float]:
    """Chance for each k-way column (k-way top-k = 100·k'/k %) and for the full gallery (from the records)."""
    out = {}
    for col in kway_columns(runs):
        k, metric = col[1:].split("_")
        out[col] = 100.0 * (5 if metric == "top5" else 1) / int(k)
    for metric in ("top1", "top5"):
        vals = runs[f"chance_{metric}"].dropna().unique()
        out[metric] = float(vals[0]) if len(vals) == 1 else math.nan
    return out


def ablation_table(runs: pd.DataFrame, grids: dict[str, Grid]) -> pd.DataFrame:
    """For each method with variant runs: its variants in its declared order, then the full method, with deltas.

    Δ is the difference of the across-subject means to the previous row (what adding that component bought).
    """
    summary = summary_table(runs, grids)
    names = runs.drop_duplicates("method")[["method", "base", "variant"]]
    summary = summary.merge(names, on="method", how="left")
    declared = ablation_declarations(runs)
    rows = []
    for (protocol, base), part in summary.groupby(["protocol", "base"], sort=True):
        if part.variant.isna().all():
            continue
        order, full_label = declared[base]
        part = part.assign(_order=[_variant_rank(v, order) for v in part.variant])
        part = part.sort_values(["_order", "method"], kind="stable")
        prev = None
        for _, r in part.iterrows():
            plain = r.variant is None or pd.isna(r.variant)
            suffix = r.method[len(display_name(base, None if plain else r.variant)):]  # "@config", " (code …)"
            label = full_label if plain else r.variant
            rows.append({"method": base, "protocol": protocol, "variant": label + suffix,
                         "entry": r.method, "top1_mean": r.top1_mean, "top1_std": r.top1_std,
                         "top5_mean": r.top5_mean, "top5_std": r.top5_std,
                         "delta_top1": r.top1_mean - prev.top1_mean if prev is not None else math.nan,
                         "delta_top5": r.top5_mean - prev.top5_mean if prev is not None else math.nan,
                         "n_subjects": r.n_subjects, "complete": r.complete, "flag": r.flag})
            prev = r
    return pd.DataFrame(rows, columns=["method", "protocol", "variant", "entry", "top1_mean", "top1_std", "top5_mean",
                                       "top5_std", "delta_top1", "delta_top5", "n_subjects", "complete", "flag"])


def ablation_declarations(runs: pd.DataFrame) -> dict[str, tuple[list[str], str]]:
    """Per base method with variant runs: (its variants' order, its full row's label).

    From the records (the declaration most of them carry, should code have changed it between runs), else from the
    installed method's declaration, else none: variants by name, the full row labelled "full".
    """
    out = {}
    for base, part in runs[runs.variant.notna()].groupby("base", sort=True):
        carried = runs.ablation[(runs.base == base) & runs.ablation.notna()].value_counts(sort=True)
        # value_counts breaks ties by first appearance; the sorted index makes the choice independent of record order
        top = sorted(carried.index[carried == carried.max()]) if len(carried) else []
        plan = json.loads(top[0]) if top else registered_declaration(base)
        out[base] = (list(plan["order"]), plan["full_label"]) if plan else ([], FULL_LABEL)
    return out


def timings_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (method, protocol), over completed runs: time and throughput per run, and the total training time."""
    rows = []
    done = runs[runs.status == COMPLETED]
    for (method, protocol), part in done.groupby(["method", "protocol"], sort=True):
        row = {"method": method, "protocol": protocol, "n_runs": int(len(part))}
        for key in TIMING_COLUMNS:
            vals = part[key].dropna()
            row[f"{key}_mean"] = float(vals.mean()) if len(vals) else math.nan
            row[f"{key}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
        row["train_s_total"] = float(part.train_s.sum(min_count=1))
        row["devices"] = ", ".join(sorted({str(d) for d in part.device.dropna()})) or None
        rows.append(row)
    cols = ["method", "protocol", "n_runs", *(f"{k}_{a}" for k in TIMING_COLUMNS for a in ("mean", "std")),
            "train_s_total", "devices"]
    return pd.DataFrame(rows, columns=cols)


def validation_curves(records: Iterable[RunRecord], runs: pd.DataFrame) -> pd.DataFrame:
    """Long frame (method, protocol, subject, seed, epoch, train_loss, val_top1, val_top5) of completed runs."""
    names = dict(zip(runs.spec_hash, runs.method))
    rows = []
    for rec in records:
        if rec.status != COMPLETED or rec.spec_hash not in names:
            continue
        for point in ((rec.metrics.get("val") or {}).get("curve") or []):
            rows.append({"method": names[rec.spec_hash], "protocol": rec.spec.protocol,
                         "subject": int(rec.spec.subject), "seed": int(rec.spec.seed),
                         "epoch": int(point["epoch"]), "train_loss": _num(point.get("train_loss")),
                         "val_top1": _num(point.get("val_top1")), "val_top5": _num(point.get("val_top5"))})
    return pd.DataFrame(rows, columns=["method", "protocol", "subject", "seed", "epoch", "train_loss", "val_top1",
                                       "val_top5"])


# -------------------------------------------------------------------------------------------------------- helpers


def _variant_rank(variant, order: Sequence[str]) -> int:
    """Declared variants in their order, undeclared ones after them (then by name), the full method last."""
    if variant is None or (isinstance(variant, float) and math.isnan(variant)):
        return len(order) + 1
    return order.index(variant) if variant in order else len(order)


def _kway_key(col: str):
    head = col[1:].split("_")[0] if col.startswith("k") else ""
    return (0, int(head), col) if head.isdigit() else (1, 0, col)


def _short_hash(obj) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:7]


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool) and math.isfinite(float(x))


def _num(x) -> float:
    return float(x) if _is_number(x) else math.nan


def _text(x) -> str | None:
    return x if isinstance(x, str) else None
