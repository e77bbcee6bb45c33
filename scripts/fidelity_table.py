"""The fidelity table of docs/fidelity.md: NICE's reference code against our runs, per subject and seed, and means.

    python scripts/fidelity_table.py --reference results/fidelity --ours results-fidelity [--protocol published]
        [--method nice] [--tolerance 2]

``--reference`` holds the JSON results of ``scripts/run_nice_reference.py``; ``--ours`` is a ``bench`` results
folder (its ``runs/*.json`` records). Only completed records of ``--method`` under ``--protocol`` whose subject, seed,
epochs, batch size and data root match a reference result are paired. Prints a Markdown table (top-1 / top-5 in %,
wall seconds), the means over the paired runs and whether the mean top-1 of ours lies within ``--tolerance`` points
of the reference's; exits 1 if it does not, 2 if nothing pairs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def reference_results(folder: Path) -> dict[tuple[int, int], dict]:
    out = {}
    for path in sorted(folder.glob("nice-reference_*.json")):
        r = json.loads(path.read_text())
        out[(r["subject"], r["seed"])] = r
    return out


def our_results(folder: Path, method: str, protocol: str, reference: dict[tuple[int, int], dict]) -> dict:
    """Completed records that match a reference run in subject, seed, epochs, batch size and data root."""
    out = {}
    for path in sorted((folder / "runs").glob("*.json")):
        r = json.loads(path.read_text())
        if r.get("method") != method or r.get("protocol") != protocol or r.get("status") != "completed":
            continue
        ref = reference.get((r["subject"], r["seed"]))
        train, data = r["config"]["train"], r["config"]["data"]
        if ref and (train["epochs"], train["batch_size"]) == (ref["epochs"], ref["batch_size"]) and \
                Path(data["root"] or "").resolve() == Path(ref["data_root"]).resolve():
            out[(r["subject"], r["seed"])] = r
    return out


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def welch_ci(ours: list[float], reference: list[float], level: float = 0.95) -> tuple[float, float]:
    """Confidence interval of mean(ours) − mean(reference), Welch's t (the two sides draw independent seeds)."""
    from scipy import stats

    va, vb = statistics.variance(ours) / len(ours), statistics.variance(reference) / len(reference)
    se = (va + vb) ** 0.5
    dof = (va + vb) ** 2 / (va ** 2 / (len(ours) - 1) + vb ** 2 / (len(reference) - 1)) if se else 1.0
    half = stats.t.ppf(0.5 + level / 2, dof) * se
    diff = statistics.mean(ours) - statistics.mean(reference)
    return diff - half, diff + half


def table(reference: dict, ours: dict) -> tuple[list[str], float]:
    """Markdown rows and the difference of mean top-1 (ours − reference) over the paired runs."""
    keys = sorted(set(reference) & set(ours))
    rows = ["| subject | seed | reference top-1 | top-5 | wall s (CPU s) | ours top-1 | top-5 | wall s |",
            "|---|---|---|---|---|---|---|---|"]
    for key in keys:
        ref, our = reference[key], ours[key]
        rows.append(f"| {key[0]} | {key[1]} | {ref['top1']:.1f} | {ref['top5']:.1f} | {ref['wall_s']:.0f} "
                    f"({ref.get('cpu_s', float('nan')):.0f}) | {our['metrics']['top1']:.1f} | "
                    f"{our['metrics']['top5']:.1f} | {our['timings']['train_s'] + our['timings']['eval_s']:.0f} |")
    ref1, our1 = [reference[k]["top1"] for k in keys], [ours[k]["metrics"]["top1"] for k in keys]
    ref5, our5 = [reference[k]["top5"] for k in keys], [ours[k]["metrics"]["top5"] for k in keys]
    rows.append(f"| mean ± sd | {len(keys)} runs | {mean_sd(ref1)} | {mean_sd(ref5)} | | {mean_sd(our1)} | "
                f"{mean_sd(our5)} | |")
    return rows, statistics.mean(our1) - statistics.mean(ref1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, help="folder of run_nice_reference.py JSON results")
    p.add_argument("--ours", required=True, help="a bench results folder (runs/*.json)")
    p.add_argument("--method", default="nice")
    p.add_argument("--protocol", default="published")
    p.add_argument("--tolerance", type=float, default=2.0, help="points of mean top-1 (default 2)")
    args = p.parse_args(argv)
    reference = reference_results(Path(args.reference))
    ours = our_results(Path(args.ours), args.method, args.protocol, reference)
    if not set(reference) & set(ours):
        print(f"no {args.method} {args.protocol} run in {args.ours} matches a reference result in {args.reference} "
              f"(subject, seed, epochs, batch size, data root)", file=sys.stderr)
        return 2
    rows, diff = table(reference, ours)
    print("\n".join(rows))
    verdict = "within" if abs(diff) <= args.tolerance else "OUTSIDE"
    keys = sorted(set(reference) & set(ours))
    ci = ""
    if len(keys) > 1:
        low, high = welch_ci([ours[k]["metrics"]["top1"] for k in keys], [reference[k]["top1"] for k in keys])
        ci = f"; 95 % CI [{low:+.1f}, {high:+.1f}] (Welch, runs as independent draws)"
    print(f"\nmean top-1, ours − reference: {diff:+.1f} points ({verdict} ±{args.tolerance:g}){ci}")
    return 0 if abs(diff) <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
