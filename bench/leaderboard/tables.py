"""Numbers → display tables: formatted cells with bold marks and notes, shared by the md, tex and html renderers.

Formatting lives here once so that the three formats cannot disagree about a number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd

from .aggregate import NOTE_CODE_CHANGED, NOTE_SYNTHETIC, NOTE_TEST_WHITENED, Grid

DASH = "–"  # undefined (the std of one seed) or absent
TEST_SELECTED = "test-selected"
#: What a table of runs on synthetic EEG carries above it, in every format.
SYNTHETIC_BANNER = ("Not comparable to published numbers: {entries} ran on synthetic EEG (bench synth), not on "
                    "THINGS-EEG recordings. Literature rows stand only beside runs on real THINGS-EEG scored against "
                    "as many test images as the paper.")
#: Footnotes explaining a note that some row's Notes cell carries (shown only when one does).
FLAG_FOOTNOTES = {
    NOTE_TEST_WHITENED: f"{NOTE_TEST_WHITENED}: some runs used EEG whitened with a noise covariance fitted on the "
                        f"training and test recordings (the official preprocessing code's choice): the test data "
                        f"shaped the inputs, so the score is not strictly held-out.",
    NOTE_CODE_CHANGED: f"{NOTE_CODE_CHANGED}: this method's runs come from different code versions (code "
                       f"fingerprint in the name); each version is its own row and is never averaged with another.",
    NOTE_SYNTHETIC: f"{NOTE_SYNTHETIC}: runs on synthetic EEG (bench synth) test the harness, not a decoder of real "
                    f"brain signals; their numbers are not comparable to published ones.",
}


@dataclass(frozen=True)
class Cell:
    text: str
    bold: bool = False
    link: str | None = None  # the source a reported row cites; md and html show it, tex leaves it out


@dataclass
class Table:
    key: str  # main | subjects | kway | ablation | timings | stats | matrix
    title: str
    headers: list[str]
    rows: list[list[Cell]]
    align: list[str]  # "l" or "r" per column
    #: "" | incomplete | reported | chance | avg | unpaired | test-selected (space-separated), for styling
    row_kinds: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    banner: str | None = None  # a warning every format shows above the table (e.g. synthetic data)


# ----------------------------------------------------------------------------------------------------- numbers


def pm(mean: float, std: float, digits: int = 1) -> str:
    if _nan(mean):
        return DASH
    return f"{mean:.{digits}f} ± {DASH if _nan(std) else f'{std:.{digits}f}'}"


def num(x: float, digits: int = 1) -> str:
    return DASH if _nan(x) else f"{x:.{digits}f}"


def signed(x: float, digits: int = 1) -> str:
    return DASH if _nan(x) else f"{x:+.{digits}f}"


def pvalue(p: float) -> str:
    if _nan(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA


def _best(values: Sequence[float]) -> float:
    finite = [v for v in values if not _nan(v)]
    return max(finite) if finite else math.nan


def _is_best(value: float, best: float) -> bool:
    return not _nan(value) and not _nan(best) and round(value, 1) == round(best, 1)


# ------------------------------------------------------------------------------------------------------ tables


def main_table(protocol: str, summary: pd.DataFrame, reported: pd.DataFrame | None, grid: Grid | None) -> Table:
    """Reproduced rows (best top-1 first), then reported rows; best reproduced top-1 and top-5 in bold."""
    rows, kinds = [], []
    best1, best5 = _best(summary.top1_mean), _best(summary.top5_mean)
    n_expected = len(grid.subjects) if grid else None
    for _, r in summary.iterrows():
        seeds = str(r.n_seeds) if r.n_seeds == r.n_seeds_max else f"{r.n_seeds}–{r.n_seeds_max}"
        rows.append([Cell(r.method), Cell("reproduced"),
                     Cell(pm(r.top1_mean, r.top1_std), _is_best(r.top1_mean, best1)),
                     Cell(pm(r.top5_mean, r.top5_std), _is_best(r.top5_mean, best5)),
                     Cell(f"{r.n_subjects}/{n_expected}" if n_expected else str(r.n_subjects)), Cell(seeds),
                     Cell(str(r.n_failed)), Cell(r.flag)])
        kinds.append("" if r.complete else "incomplete")
    if reported is not None:
        avg = reported[reported.subject == "avg"].sort_values(["top1_mean", "method"], ascending=[False, True],
                                                             kind="stable")
        for _, r in avg.iterrows():
            rows.append([Cell(r.method), Cell("reported"), Cell(pm(r.top1_mean, r.top1_std) if not _nan(r.top1_std)
                                                                 else num(r.top1_mean)),
                         Cell(pm(r.top5_mean, r.top5_std) if not _nan(r.top5_std) else num(r.top5_mean)),
                         Cell(str(int(r.n_subjects)) if not _nan(r.n_subjects) else DASH), Cell(DASH), Cell(DASH),
                         Cell(r.caveat or "", link=r.reference or None)])
            kinds.append("reported")
    notes = ["Top-1/top-5: % correct in the full zero-shot test gallery; mean ± std across subjects of each "
             "subject's mean over seeds (std ddof=1; – where undefined).",
             "Failed runs are counted, never averaged in. Reported rows are the papers' numbers, not rerun here.",
             *flag_footnotes(summary.flag)]
    return Table("main", f"{protocol}: leaderboard",
                 ["Method", "Source", "Top-1 (%)", "Top-5 (%)", "Subjects", "Seeds", "Failed", "Notes"],
                 rows, ["l", "l", "r", "r", "r", "r", "r", "l"], kinds, notes)


def subjects_table(protocol: str, per_subject: pd.DataFrame, summary: pd.DataFrame, reported: pd.DataFrame | None,
                   grid: Grid | None, metric: str = "top1") -> Table:
    """Rows = subjects, columns = methods; each cell the mean ± std over seeds, best reproduced per row in bold."""
    methods = list(summary.method)
    rep_methods = [] if reported is None else \
        list(dict.fromkeys(reported[reported.subject != "avg"].method))
    rep_subjects = set() if reported is None else \
        {int(x) for x in reported[reported.method.isin(rep_methods) & (reported.subject != "avg")].subject}
    subjects = sorted(set(grid.subjects if grid else ()) | set(per_subject.subject.astype(int)) | rep_subjects)
    n_seeds = len(grid.seeds) if grid else None
    rows, kinds = [], []
    incomplete = False
    for subject in subjects:
        cells = per_subject[per_subject.subject == subject].set_index("method")
        best = _best([cells.loc[m, f"{metric}_mean"] for m in methods if m in cells.index])
        row = [Cell(f"sub-{subject:02d}")]
        for m in methods:
            if m not in cells.index:
                row.append(Cell(DASH))
                continue
            c = cells.loc[m]
            if c.n_seeds == 0:
                row.append(Cell("failed"))
                continue
            short = (n_seeds is not None and c.n_seeds < n_seeds) or c.n_failed > 0
            incomplete |= short
            row.append(Cell(pm(c[f"{metric}_mean"], c[f"{metric}_std"]) + ("†" if short else ""),
                            _is_best(c[f"{metric}_mean"], best)))
        for m in rep_methods:
            hit = reported[(reported.method == m) & (reported.subject == str(subject))]
            row.append(Cell(num(hit.iloc[0][f"{metric}_mean"]) if len(hit) else DASH))
        rows.append(row)
        kinds.append("")
    avg_best = _best(summary[f"{metric}_mean"])
    avg = [Cell("avg")] + [Cell(pm(r[f"{metric}_mean"], r[f"{metric}_std"]), _is_best(r[f"{metric}_mean"], avg_best))
                           for _, r in summary.iterrows()]
    for m in rep_methods:
        hit = reported[(reported.method == m) & (reported.subject == "avg")]
        avg.append(Cell(num(hit.iloc[0][f"{metric}_mean"]) if len(hit) else DASH))
    rows.append(avg)
    kinds.append("avg")
    notes = [f"{_metric_label(metric)} (%): mean ± std over seeds per subject; avg = mean ± std across subjects."]
    if incomplete:
        notes.append("† fewer completed seeds than expected for this subject (missing or failed runs).")
    if rep_methods:
        notes.append("(reported) columns are the papers' per-subject numbers.")
    return Table("subjects", f"{protocol}: per-subject {_metric_label(metric)}",
                 ["Subject", *methods, *(f"{m} (reported)" for m in rep_methods)], rows,
                 ["l"] + ["r"] * (len(methods) + len(rep_methods)), kinds, notes)


def kway_table(protocol: str, kway: pd.DataFrame, columns: Sequence[str], chance: dict[str, float],
               n_test: int | None) -> Table:
    """k-way top-1 (and top-5 where recorded) with the full n_test-way scores last and a chance row."""
    metrics = [*columns, "top1", "top5"]
    headers = ["Method"] + [_kway_label(c, n_test) for c in metrics]
    best = {c: _best(kway[f"{c}_mean"]) for c in metrics}
    rows, kinds = [], []
    for _, r in kway.iterrows():
        rows.append([Cell(r.method)] + [Cell(pm(r[f"{c}_mean"], r[f"{c}_std"]), _is_best(r[f"{c}_mean"], best[c]))
                                        for c in metrics])
        kinds.append("")
    rows.append([Cell("chance")] + [Cell(num(chance.get(c, math.nan))) for c in metrics])
    kinds.append("chance")
    return Table("kway", f"{protocol}: k-way identification", headers, rows, ["l"] + ["r"] * len(metrics), kinds,
                 ["k-way: the true image against k−1 distractors drawn from the test set; % correct, "
                  "mean ± std across subjects."])


def ablation_table(protocol: str, ablation: pd.DataFrame, metric: str = "top1", alpha: float = 0.05) -> Table:
    rows = [[Cell(r.method), Cell(r.variant), Cell(pm(r.top1_mean, r.top1_std)), Cell(signed(r.delta_top1)),
             Cell(pm(r.top5_mean, r.top5_std)), Cell(signed(r.delta_top5)),
             Cell(pvalue(r.p_step_holm), bool(r.p_step_holm < alpha)), Cell(str(r.n_subjects)), Cell(r.flag)]
            for _, r in ablation.iterrows()]
    return Table("ablation", f"{protocol}: ablation",
                 ["Method", "Variant", "Top-1 (%)", "Δ Top-1", "Top-5 (%)", "Δ Top-5", "p vs above (Holm)",
                  "Subjects", "Notes"], rows, ["l", "l", "r", "r", "r", "r", "r", "r", "l"], [""] * len(rows),
                 ["Components added one at a time; Δ = change of the across-subject mean from the row above. "
                  f"p: two-sided exact sign-flip test of each row against the row above, paired over subjects, on "
                  f"{_metric_label(metric)}; Holm over the steps of one method; bold: p < {alpha}.",
                  *flag_footnotes(ablation.flag)])


def timings_table(protocol: str, timings: pd.DataFrame) -> Table:
    rows = [[Cell(r.method), Cell(str(r.n_runs)), Cell(pm(r.train_s_mean, r.train_s_std)),
             Cell(pm(r.samples_per_s_mean, r.samples_per_s_std, 0)), Cell(pm(r.eval_s_mean, r.eval_s_std, 2)),
             Cell(num(r.epochs_run_mean)), Cell(num(r.train_s_total / 3600.0, 2)), Cell(r.devices or DASH)]
            for _, r in timings.iterrows()]
    return Table("timings", f"{protocol}: timings",
                 ["Method", "Runs", "Train (s/run)", "Samples/s", "Eval (s/run)", "Epochs", "Train total (h)",
                  "Device"], rows, ["l"] + ["r"] * 6 + ["l"], [""] * len(rows),
                 ["Completed runs only; mean ± std over runs (all subjects and seeds)."])


def pairs_table(protocol: str, pairs: pd.DataFrame, metric: str, alpha: float) -> Table:
    rows = [[Cell(r.method_a), Cell(r.method_b), Cell(str(r.n)), Cell(signed(r.mean_diff)), Cell(num(r.d_z, 2)),
             Cell(pvalue(r.p_perm)), Cell(pvalue(r.p_holm), bool(r.significant)), Cell(pvalue(r.p_wilcoxon)),
             Cell(pvalue(r.p_wilcoxon_holm), bool(r.p_wilcoxon_holm < alpha))]
            for _, r in pairs.iterrows()]
    return Table("stats", f"{protocol}: paired tests across subjects ({_metric_label(metric)})",
                 ["A", "B", "Subjects", "Δ (A−B)", "d_z", "p perm", "p perm (Holm)", "p Wilcoxon",
                  "p Wilcoxon (Holm)"], rows, ["l", "l"] + ["r"] * 7, [""] * len(rows),
                 ["Pairs over the subjects both methods completed (each a mean over seeds). p perm: exact sign-flip "
                  "permutation test on the mean difference; p Wilcoxon: signed-rank test; both two-sided. Holm "
                  f"corrects over all pairs of this protocol; bold: adjusted p < {alpha}. d_z = mean(Δ)/std(Δ)."])


def matrix_table(protocol: str, diff: pd.DataFrame, p: pd.DataFrame, metric: str, alpha: float) -> Table:
    methods = list(diff.index)
    rows = []
    for a in methods:
        row = [Cell(a)]
        for b in methods:
            if a == b:
                row.append(Cell("—"))
            elif _nan(p.loc[a, b]):
                row.append(Cell(DASH))
            else:
                row.append(Cell(f"{signed(diff.loc[a, b])} (p={pvalue(p.loc[a, b])})", p.loc[a, b] < alpha))
        rows.append(row)
    return Table("matrix", f"{protocol}: significance matrix ({_metric_label(metric)})", ["row − column", *methods],
                 rows, ["l"] + ["r"] * len(methods), [""] * len(rows),
                 [f"Mean difference row − column in points, Holm-adjusted permutation p; bold: p < {alpha}."])


def inflation_table(frame: pd.DataFrame) -> Table:
    """Per method and protocol pair: honest vs as-published top-1 on paired runs, Δ with its 95 % CI; test-selected
    rows marked, unpaired published runs listed in rows of their own."""
    rows, kinds = [], []
    for _, r in frame.iterrows():
        name = r.method if not r.paired or r.honest_entry == r.method else f"{r.method} (vs {r.honest_entry})"
        ci = DASH if _nan(r.ci_low) else f"[{signed(r.ci_low)}, {signed(r.ci_high)}]"
        notes = [n for n in (r.flag, NOTE_SYNTHETIC if r.synthetic else "") if n]
        rows.append([Cell(name), Cell(f"{r.protocol} → {r.published_protocol}"), Cell(str(r.n_pairs)),
                     Cell(str(r.n_subjects)), Cell(num(r.honest_top1)), Cell(num(r.published_top1)),
                     Cell(signed(r.delta_top1)), Cell(ci),
                     Cell(TEST_SELECTED if r.test_selected else "not on test", bool(r.test_selected)),
                     Cell(r.settings or DASH), Cell("; ".join(notes) or DASH)])
        kinds.append(" ".join(k for k in ("" if r.paired else "unpaired", TEST_SELECTED if r.test_selected else "")
                              if k))
    notes = ["Honest: the intra/inter protocols of the leaderboard. Published: the protocol as the paper scored it "
             "(its gallery and similarity, its epoch selection), never shown in the leaderboard's tables.",
             "Pairs: an honest and a published run of the same method, subject, seed and data. Top-1 (%) and "
             "Δ = published − honest: mean across subjects of each subject's mean over its paired seeds; 95 % CI: "
             "Student t across subjects (– below two subjects).",
             f"{TEST_SELECTED}: the paper chose its epoch by test accuracy (e.g. ATM's best test epoch), so its "
             f"number is optimistic by construction.",
             "Unpaired rows list published runs that no honest run matches; their published mean stands alone.",
             *flag_footnotes([NOTE_SYNTHETIC] if frame.synthetic.any() else [])]
    return Table("inflation", "Protocol inflation: as published vs honest (top-1)",
                 ["Method", "Protocols", "Pairs", "Subjects", "Honest (%)", "Published (%)", "Δ (points)", "95 % CI",
                  "Published selection", "Published scoring", "Notes"], rows,
                 ["l", "l", "r", "r", "r", "r", "r", "r", "l", "l", "l"], kinds, notes)


def flag_footnotes(flags) -> list[str]:
    """The footnotes of the notes that appear in some row's flag, in a fixed order."""
    found = {part.strip() for flag in flags if isinstance(flag, str) for part in flag.split(";")}
    return [text for note, text in FLAG_FOOTNOTES.items() if note in found]


def _metric_label(metric: str) -> str:
    return {"top1": "top-1", "top5": "top-5"}.get(metric, metric)


def _kway_label(col: str, n_test: int | None) -> str:
    if col in ("top1", "top5"):
        head = f"{n_test}-way" if n_test else "full"
        return head if col == "top1" else f"{head} top-5"
    k, metric = col[1:].split("_")
    return f"{k}-way" if metric == "top1" else f"{k}-way top-5"
