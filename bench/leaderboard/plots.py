"""Leaderboard figures (matplotlib, Agg): per-subject bars, paired differences, validation curves.

Each function takes the aggregated frames and returns a Figure; `save_figure` writes PNG and SVG atomically and
`png_base64` embeds one in the HTML report.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: CI and workers have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from bench.io import atomic_path  # noqa: E402

#: SVG text stays text and file hashes stay stable between runs, so regenerated plots diff cleanly.
_RC = {"svg.fonttype": "none", "svg.hashsalt": "thingsbench", "font.size": 9}


def subject_bars(per_subject: pd.DataFrame, methods: Sequence[str], protocol: str, metric: str = "top1") -> Figure:
    """Grouped bars: one group per subject, one bar per method, error bars = std over seeds."""
    subjects = sorted(per_subject.subject.unique().tolist())
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(subjects) * max(1, len(methods)) ** 0.5 + 2), 3.6))
        width = 0.8 / max(1, len(methods))
        x = np.arange(len(subjects))
        for i, m in enumerate(methods):
            part = per_subject[(per_subject.method == m) & (per_subject.n_seeds > 0)].set_index("subject")
            means = np.array([part[f"{metric}_mean"].get(s, np.nan) for s in subjects], dtype=float)
            stds = np.array([part[f"{metric}_std"].get(s, np.nan) for s in subjects], dtype=float)
            pos = x + (i - (len(methods) - 1) / 2) * width
            ax.bar(pos, means, width, label=m)
            has_std = np.isfinite(stds)  # a single seed has no spread to draw, not a spread of zero
            if has_std.any():
                ax.errorbar(pos[has_std], means[has_std], yerr=stds[has_std], fmt="none", ecolor="black",
                            capsize=2, linewidth=0.8)
        ax.set_xticks(x, [f"sub-{s:02d}" for s in subjects], rotation=45 if len(subjects) > 6 else 0)
        ax.set_ylabel(f"{_label(metric)} (%)")
        ax.set_title(f"{protocol}: per-subject {_label(metric)} (mean ± std over seeds)")
        ax.legend(fontsize=7, ncols=min(4, max(1, len(methods))))
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
    return fig


def paired_differences(per_subject: pd.DataFrame, methods: Sequence[str], reference: str, protocol: str,
                       metric: str = "top1") -> Figure:
    """For each method, its per-subject difference to ``reference`` (points) and the mean difference (bar)."""
    ref = _values(per_subject, reference, metric)
    others = [m for m in methods if m != reference]
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(max(5.5, 1.1 * len(others) + 2), 3.6))
        for i, m in enumerate(others):
            vals = _values(per_subject, m, metric)
            common = sorted(set(vals.index) & set(ref.index))
            d = (vals.loc[common] - ref.loc[common]).to_numpy()
            if not len(d):
                continue
            ax.bar(i, d.mean(), 0.6, alpha=0.35, color=f"C{i}")
            jitter = np.linspace(-0.15, 0.15, len(d)) if len(d) > 1 else np.zeros(1)
            ax.scatter(i + jitter, d, s=14, color=f"C{i}", zorder=3)
            for j, s in enumerate(common):
                ax.annotate(str(s), (i + jitter[j], d[j]), fontsize=6, xytext=(3, 0), textcoords="offset points")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(others)), others, rotation=30 if len(others) > 4 else 0)
        ax.set_ylabel(f"Δ {_label(metric)} vs {reference} (points)")
        ax.set_title(f"{protocol}: Δ to {reference} per subject")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
    return fig


def validation_curves(curves: pd.DataFrame, methods: Sequence[str], protocol: str, metric: str = "top1") -> Figure:
    """Validation score per epoch, mean over runs (line) and min–max over runs (band), one line per method."""
    col = f"val_{metric}"
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(6.0, 3.6))
        for m in methods:
            part = curves[(curves.method == m) & curves[col].notna()]
            if part.empty:
                continue
            g = part.groupby("epoch")[col].agg(["mean", "min", "max"])
            ax.plot(g.index, g["mean"], label=f"{m} ({part.groupby(['subject', 'seed']).ngroups} runs)")
            ax.fill_between(g.index, g["min"], g["max"], alpha=0.15)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {_label(metric)} (%)")
        ax.set_title(f"{protocol}: validation curves (mean over runs, band = min–max)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
    return fig


def save_figure(fig: Figure, stem: str | Path) -> list[Path]:
    """Write ``stem``.png and ``stem``.svg, each atomically; returns the paths."""
    paths = []
    for ext in ("png", "svg"):
        path = Path(f"{stem}.{ext}")
        with plt.rc_context(_RC), atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=120, metadata={"Date": None} if ext == "svg" else {"Software": None})
        paths.append(path)
    return paths


def png_base64(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def close(fig: Figure) -> None:
    plt.close(fig)


def _values(per_subject: pd.DataFrame, method: str, metric: str) -> pd.Series:
    part = per_subject[(per_subject.method == method) & (per_subject.n_seeds > 0)]
    return part.set_index("subject")[f"{metric}_mean"].dropna()


def _label(metric: str) -> str:
    return {"top1": "top-1", "top5": "top-5"}.get(metric, metric)
