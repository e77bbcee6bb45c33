"""The `bench` command line: one small function per subcommand, each calling one library function.

Errors the user can fix (bad files, unknown names, bad config keys) are printed as one clear line and exit 1;
anything else is a bug and shows its traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from bench.errors import UserError
from bench.registry import REGISTRIES, RegistryError, load_plugin

app = typer.Typer(
    name="bench",
    help="ThingsBench: train and compare EEG-to-image decoders on THINGS-EEG under one fair protocol.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (logs, CI) gets a wide fixed width instead of rich's 80-column default, so tables do not fold.
console = Console() if sys.stdout.isatty() else Console(width=140)
err_console = Console(stderr=True, soft_wrap=True)

#: Exceptions whose message is the whole story for the user: one line, exit 1. Library modules derive their error
#: classes from `bench.errors.UserError`, so the CLI needs no import of them to recognise them.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)


@app.callback()
def _global(
    plugin: List[Path] = typer.Option([], "--plugin", help="Load a single-file method (or other component) first. Repeatable."),
) -> None:
    for path in plugin:
        load_plugin(path)


PROTOCOL_HELP = ("intra | inter | published | published-inter (default: the config's). published*: as each paper ran "
                 "it, not comparable to intra/inter (bench list protocols).")


@app.command("list")
def list_cmd(
    kind: str = typer.Argument("methods", help="methods | encoders | features | datasets | protocols"),
    pattern: str = typer.Argument("*", help="glob filter on names, e.g. 'nice*'"),
) -> None:
    """List registered components with their description and citation."""
    if kind not in REGISTRIES:
        raise RegistryError(f"unknown kind {kind!r}; choose one of {', '.join(REGISTRIES)}")
    registry = REGISTRIES[kind]
    table = Table(title=f"{kind} matching {pattern!r}", show_lines=False)
    for col in ("name", "description", "citation"):
        table.add_column(col, overflow="fold")
    for name in registry.list(pattern):
        entry = registry.get(name)
        table.add_row(name, entry.description, entry.citation)
    console.print(table)


@app.command()
def doctor(
    data_root: List[Path] = typer.Option([], "--data-root", help="Also inspect this data root. Repeatable."),
    no_ray: bool = typer.Option(False, "--no-ray", help="Skip starting a local Ray."),
) -> None:
    """Report package versions, devices, Ray, torchvision ops and the data roots found."""
    from bench.doctor import run_checks

    checks = run_checks(data_root, start_ray=not no_ray)
    table = Table(title="bench doctor")
    for col in ("section", "check", "status"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(c.section, c.name, c.value if c.ok else f"[red]{c.value}[/red]")
    console.print(table)
    failed = [c for c in checks if not c.ok]
    if failed:
        err_console.print(f"[red]{len(failed)} problem(s) found[/red]")
        raise typer.Exit(1)


@app.command()
def train(
    method: str = typer.Option(..., "--method", help="Registered method name (bench list methods)."),
    subject: int = typer.Option(..., "--subject", help="Subject id (1-based; with --protocol inter, the held-out one)."),
    seed: int = typer.Option(0, "--seed", help="Seed of this run."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help=PROTOCOL_HELP),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Data root; default: the built-in synthetic dataset."),
    results_dir: Path = typer.Option(None, "--results-dir", help="Where runs/ is written (default ./results)."),
    config: List[Path] = typer.Option([], "--config", help="YAML config layered over the method's. Repeatable."),
    set_: List[str] = typer.Option([], "--set", help="Override one key, e.g. --set train.lr=1e-3. Repeatable."),
    force: bool = typer.Option(False, "--force", help="Recompute even if a completed record exists."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train, select on validation and test one run; writes one record under <results-dir>/runs/."""
    from bench.paths import default_results_dir
    from bench.records import check_writable

    check_writable(results_dir or default_results_dir())  # before the data is read and the model trained
    from bench.execute import train_one

    outcome = train_one(method, subject, seed, protocol=protocol, data_root=data_root,
                        results_dir=results_dir or default_results_dir(), config_files=config, sets=set_,
                        force=force, progress=not quiet)
    rec = outcome.record
    where = (results_dir or default_results_dir()) / "runs" / f"{rec.spec_hash}.json"
    if outcome.skipped:
        console.print(f"already completed (use --force to recompute): {where}")
    if outcome.stale:
        console.print(f"stale record recomputed: {outcome.stale}", highlight=False)
    if rec.status != "completed":
        err_console.print(f"[red]{rec.spec.label} failed:[/red] {rec.error['type']}: {rec.error['message']}\n"
                          f"record: {where}")
        raise typer.Exit(1)
    m = rec.metrics
    val_top1 = m["val"]["best_top1"]
    val = "no validation" if val_top1 is None else f"val top-1 {val_top1:.1f}%"
    console.print(f"{rec.spec.label}: top-1 {m['top1']:.1f}%  top-5 {m['top5']:.1f}%  "
                  f"(chance {m['chance_top1']:.1f}% / {m['chance_top5']:.1f}%, {m['n_test']}-way; "
                  f"selected epoch {m['val']['selected_epoch']}, {val})")
    if _published_label(m):
        console.print(_published_label(m), highlight=False)
    console.print(f"record: {where}")


def _published_label(metrics: dict) -> str:
    """The line that says how a non-honest number was made ('' for the harness's own scoring and selection)."""
    parts = []
    if metrics.get("main_gallery", "image") != "image" or metrics.get("similarity", "cosine") != "cosine":
        parts.append(f"scored as published: {metrics['similarity']} against the {metrics['main_gallery']} gallery")
    if metrics.get("test_selected"):
        parts.append("TEST-SELECTED: validation read the test partition")
    return "; ".join(parts)


def _say(message: str) -> None:
    """Progress lines from sweeps; a module-level function because Ray pickles the callbacks that call it."""
    console.print(message, highlight=False, soft_wrap=True)


def _ray_options(address, cpus_per_trial, gpus_per_trial, workers_per_trial, max_concurrent, verbose=False):
    from bench.progress import live_terminal
    from bench.ray_scheduler import RayOptions

    return RayOptions(address=address, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                      workers_per_trial=workers_per_trial, max_concurrent=max_concurrent, verbose=verbose,
                      live=live_terminal())


ADDRESS_HELP = "Join a running Ray cluster ('auto' or HOST:PORT) instead of starting a local one."
VERBOSE_HELP = "Also show Ray's own output: its banners, Tune's reporter and the trials' worker logs."


@app.command()
def run(
    method: str = typer.Option(..., "--method", help="Method name(s), comma-separated, e.g. mcdb,nice,atm."),
    subjects: str = typer.Option("all", "--subjects", help="'all', '1,2,5' or '1-3'."),
    seeds: str = typer.Option("0", "--seeds", help="Seeds, e.g. '0,1,2' or '0-4'."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help=PROTOCOL_HELP),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Data root; default: the built-in synthetic dataset."),
    results_dir: Path = typer.Option(None, "--results-dir", help="Where runs/ is written (default ./results)."),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    cpus_per_trial: float = typer.Option(1.0, "--cpus-per-trial", help="CPUs (and torch threads) per trial."),
    gpus_per_trial: float = typer.Option(0.0, "--gpus-per-trial", help="GPUs per trial; fractions share a GPU, N>1 runs DDP."),
    workers_per_trial: int = typer.Option(1, "--workers-per-trial", help="DDP workers per trial (Ray Train); >1 also on CPU."),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", help="At most this many trials at once."),
    retries: int = typer.Option(0, "--retries", help="Re-run failed trials (also those whose process died) up to N times."),
    wait: bool = typer.Option(False, "--wait", help="Wait for runs another live `bench run` is computing, then reuse "
                                                    "them (or compute them if it died without finishing them)."),
    max_failures: int = typer.Option(0, "--max-failures", min=0, help="Ray Tune restarts a trial whose process "
                                     "died up to N times, from its last epoch's checkpoint."),
    force: bool = typer.Option(False, "--force", help="Recompute runs that already have a completed record."),
    ablation: bool = typer.Option(False, "--ablation", help="Also run the method's declared ablation variants."),
    config: List[Path] = typer.Option([], "--config", help="YAML config layered over each method's. Repeatable."),
    set_: List[str] = typer.Option([], "--set", help="Override one key for every method. Repeatable."),
    tracker: Optional[str] = typer.Option(None, "--tracker", help="Also log each run to tensorboard, mlflow and/or "
                                          "wandb (comma-separated): curves, test metrics, config (docs/tracking.md)."),
    experiment: str = typer.Option("thingsbench", "--experiment", help="The trackers' experiment (MLflow), project "
                                   "(W&B) or folder (TensorBoard)."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Run methods × subjects × seeds as Ray Tune trials, skipping completed runs; print the leaderboard.

    Exits 1 if any run failed (raised, or its process died); runs another `bench run` is computing are reported
    busy and do not change the exit code."""
    from bench.paths import default_results_dir
    from bench.records import check_writable

    check_writable(results_dir or default_results_dir())  # before Ray starts and the data is read or generated
    from bench.grid import SweepRequest, print_summary, run_sweep

    trackers = _parse_trackers(tracker)  # a missing package is named before any work

    req = SweepRequest(methods=[m.strip() for m in method.split(",") if m.strip()], subjects=subjects, seeds=seeds,
                       protocol=protocol, data_root=data_root, results_dir=results_dir or default_results_dir(),
                       config_files=tuple(config), sets=tuple(set_), ablation=ablation, force=force, retries=retries,
                       wait=wait)
    ray_opts = _ray_options(address, cpus_per_trial, gpus_per_trial, workers_per_trial, max_concurrent, verbose)
    ray_opts.max_failures, ray_opts.trackers, ray_opts.experiment = max_failures, trackers, experiment
    result = run_sweep(req, ray_opts, printer=_say)
    print_summary(result, req, console)
    if result.of_kind("failed"):
        raise typer.Exit(1)


@app.command()
def tune(
    method: str = typer.Option(..., "--method", help="Method to tune."),
    search: Path = typer.Option(..., "--search", help="Search-space YAML (e.g. configs/search/<method>.yaml)."),
    num_samples: int = typer.Option(8, "--num-samples", help="Samples drawn from the space (grid keys multiply)."),
    scheduler: str = typer.Option("fifo", "--scheduler", help="fifo | asha (stops weak trials early on validation)."),
    subjects: str = typer.Option("1", "--subjects", help="Subjects whose mean validation top-1 is maximised."),
    seed: int = typer.Option(0, "--seed"),
    protocol: Optional[str] = typer.Option(None, "--protocol"),
    data_root: Optional[Path] = typer.Option(None, "--data-root"),
    results_dir: Path = typer.Option(None, "--results-dir"),
    out: Optional[Path] = typer.Option(None, "--out", help="Best config YAML (default <results-dir>/tune/<method>-best.yaml)."),
    final_test: bool = typer.Option(False, "--final-test", help="Then run and test the best config on these subjects."),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    cpus_per_trial: float = typer.Option(1.0, "--cpus-per-trial"),
    gpus_per_trial: float = typer.Option(0.0, "--gpus-per-trial"),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent"),
    config: List[Path] = typer.Option([], "--config"),
    set_: List[str] = typer.Option([], "--set"),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Search hyper-parameters on validation top-1 only; write the best config for `bench run --config`."""
    from bench.paths import default_results_dir
    from bench.hparam_search import TuneRequest, run_tune

    rdir = results_dir or default_results_dir()
    _check_tune_writable(rdir, out)
    ray_opts = _ray_options(address, cpus_per_trial, gpus_per_trial, 1, max_concurrent, verbose)
    outcome = run_tune(TuneRequest(method=method, search=search, num_samples=num_samples, scheduler=scheduler,
                                   subjects=subjects, seed=seed, protocol=protocol, data_root=data_root,
                                   results_dir=rdir, config_files=tuple(config), sets=tuple(set_), out=out),
                       ray_opts, printer=_say)
    console.print(f"best of {len(outcome.trials)} trial(s): mean validation top-1 {outcome.best_val_top1:.1f}% "
                  f"with {outcome.best_overrides}")
    console.print(f"best config: {outcome.config_path}")
    if final_test:
        from bench.grid import SweepRequest, print_summary, run_sweep

        req = SweepRequest(methods=[method], subjects=subjects, seeds=str(seed), protocol=protocol,
                           data_root=data_root, results_dir=rdir, config_files=(outcome.config_path,))
        print_summary(run_sweep(req, ray_opts, printer=_say), req, console)


def _check_tune_writable(results_dir: Path, out: Optional[Path]) -> None:
    """`bench tune` writes Ray's trials under the results folder and the best config to --out: both must take a file
    before Ray starts."""
    from bench.io import probe_writable
    from bench.records import check_writable

    check_writable(results_dir)
    if out is not None:
        probe_writable(out.parent, "output folder")


@app.command()
def features(
    images: Path = typer.Option(..., "--images", help="Image root in the THINGS layout (training_images/, test_images/)."),
    model: str = typer.Option(..., "--model", help="FAMILY:NAME, e.g. open_clip:ViT-H-14 or timm:resnet50.a1_in1k."),
    out: Path = typer.Option(..., "--out", help="Output .npz feature file (atomic; reused when its metadata matches)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Local checkpoint file. Default: the library's cache, "
                                           "downloaded into it when online."),
    offline: bool = typer.Option(False, "--offline", help="Never download weights (also when HF_HUB_OFFLINE=1): "
                                 "--weights or the local cache only."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="open_clip tag (default: the model's first, "
                                             "ViT-H-14 → laion2b_s32b_b79k); timm puts the tag in the name."),
    random_init: bool = typer.Option(False, "--random-init", help="Seeded random weights, for tests and smoke runs."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Intermediate block N (0-based, -1 = last), pooled."),
    pool: Optional[str] = typer.Option(None, "--pool", help="With --layer: mean (patch tokens / spatial; default) or cls."),
    text: bool = typer.Option(True, "--text/--no-text", help="Text features of the concept prompts (open_clip, final layer)."),
    prompt_template: str = typer.Option("This picture is {concept}", "--prompt-template"),
    underscores_to_spaces: bool = typer.Option(False, "--underscores-to-spaces", help="aircraft_carrier → aircraft carrier."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float16 (storage; computed in float32)."),
    transform: str = typer.Option("eval", "--transform", help="eval: the model's resize + centre crop; train: its "
                                  "random training transform (ATM's open_clip preprocess_train), seeded per image."),
    seed: Optional[int] = typer.Option(None, "--seed", help="With --transform train: the crops' seed (default 0); "
                                       "each image's draw depends only on it and the image's index."),
    batch_size: int = typer.Option(64, "--batch-size"),
    workers: int = typer.Option(4, "--workers", help="Threads decoding images."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    force: bool = typer.Option(False, "--force", help="Recompute even when --out already matches."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Extract L2-normalised image (and text) features of a THINGS image folder with an open_clip or timm model."""
    from bench.extract import extract_features

    extract_features(images, model, out, weights=weights, pretrained=pretrained, random_init=random_init,
                     offline=offline, layer=layer,
                     pool=pool, text=text, prompt_template=prompt_template, underscores_to_spaces=underscores_to_spaces,
                     dtype=dtype, transform=transform, seed=seed, batch_size=batch_size, workers=workers, device=device,
                     force=force, progress=progress,
                     log=lambda msg: err_console.print(msg, highlight=False, markup=False))


@app.command()
def leaderboard(
    results_dir: Optional[Path] = typer.Option(None, "--results-dir", help="Results directory (default: $BENCH_RESULTS_DIR or ./results)."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="intra | inter, or published | published-inter for their inflation table alone (default: every protocol found)."),
    methods: List[str] = typer.Option([], "--methods", help="Only these methods (comma-separated or repeated); a base name brings its ablation variants."),
    fmt: str = typer.Option("md", "--format", help="md | csv | tex | html"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write here instead of printing."),
    table: Optional[str] = typer.Option(None, "--table", help="all | main | subjects | kway | ablation | timings | stats | inflation (csv: one table, default main)."),
    reported: Optional[Path] = typer.Option(None, "--reported", help="Literature numbers (default: <results-dir>/reported.csv if present)."),
    no_reported: bool = typer.Option(False, "--no-reported", help="Leave reported rows out."),
    expect_subjects: Optional[str] = typer.Option(None, "--expect-subjects", help="Subjects a complete row has, e.g. 1-10 (default: all subjects seen)."),
    expect_seeds: Optional[str] = typer.Option(None, "--expect-seeds", help="Seeds a complete row has, e.g. 0,1,2 (default: all seeds seen)."),
    metric: str = typer.Option("top1", "--metric", help="top1 | top5: the score the tests and plots compare."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Method the paired-difference plot compares against (default: the best)."),
    plots_dir: Optional[Path] = typer.Option(None, "--plots-dir", help="Also write the plots (PNG and SVG) here."),
    skip_corrupt: bool = typer.Option(False, "--skip-corrupt", help="Leave out (and list) corrupt run records instead "
                                      "of refusing: edited or impossible metrics, or ones their arrays disagree with."),
) -> None:
    """Compare methods: tables, paired tests across subjects, plots and a self-contained HTML report."""
    from bench.ids import parse_optional_ids
    from bench.leaderboard import write_leaderboard
    from bench.paths import default_results_dir

    result = write_leaderboard(
        results_dir or default_results_dir(), fmt, out, table=table, reported=reported, use_reported=not no_reported,
        protocol=protocol, methods=[m for item in methods for m in item.split(",") if m.strip()] or None,
        expect_subjects=parse_optional_ids(expect_subjects, "expect-subjects"),
        expect_seeds=parse_optional_ids(expect_seeds, "expect-seeds"), metric=metric,
        reference=reference, plots_dir=plots_dir, skip_corrupt=skip_corrupt)
    for problem in result.skipped:
        err_console.print(f"skipped corrupt record: {problem}", highlight=False, markup=False)
    if result.out is None:
        typer.echo(result.text, nl=False)  # plain echo: rich would read "mcdb[+text]" as markup
    else:
        err_console.print(f"wrote {result.out}", highlight=False)
    for path in result.plots:
        err_console.print(f"wrote {path}", highlight=False)


# --- a finished run's model, used again: embed and predict -------------------------------------------------------
RUN_HELP = "A run: its record-hash prefix (>= 4 characters) or method/protocol/subject/seed, e.g. nice/intra/1/0."
RESULTS_HELP = "Results directory holding runs/ (default: $BENCH_RESULTS_DIR or ./results)."
EEG_HELP = "EEG file in any supported layout (NICE/ATM pickle, official .npy, UBP .pt), e.g. sub-01's test file."


def _open_saved_run(results_dir: Optional[Path], run: str, device: str):
    """The run's rebuilt method; a code-changed warning becomes one line on stderr."""
    import warnings

    from rich.markup import escape

    from bench.paths import default_results_dir
    from bench.saved_model import CodeChangedWarning, open_run

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        saved = open_run(results_dir or default_results_dir(), run, device)
    for warning in caught:
        if issubclass(warning.category, CodeChangedWarning):
            err_console.print(f"[yellow]warning:[/yellow] {escape(str(warning.message))}", highlight=False)
        else:  # not ours: shown as Python would have shown it
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return saved


@app.command()
def embed(
    run: str = typer.Option(..., "--run", help=RUN_HELP),
    eeg: Path = typer.Option(..., "--eeg", help=EEG_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the embeddings here as .npy (atomic)."),
    results_dir: Optional[Path] = typer.Option(None, "--results", "--results-dir", help=RESULTS_HELP),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    batch_size: int = typer.Option(1024, "--batch-size", help="Rows per encode_eeg call (the evaluator's: 1024)."),
) -> None:
    """EEG embeddings of a file with a finished run's model: its channels, window and test-repetition averaging."""
    import numpy as np

    from bench.saved_model import embed_eeg, read_run_eeg, save_embeddings

    saved = _open_saved_run(results_dir, run, device)
    emb = embed_eeg(saved, read_run_eeg(saved, eeg), batch_size)
    if out is not None:
        save_embeddings(out, emb)
        console.print(f"wrote {out} ({emb.shape[0]} × {emb.shape[1]} float32) with run {saved.label}",
                      highlight=False)
        return
    norms = np.linalg.norm(emb, axis=1) if emb.size else np.zeros(0)
    reps = saved.meta["selection"]["test_repetitions"]
    console.print(f"run {saved.label}: {eeg}", highlight=False)
    console.print(f"embeddings: {emb.shape[0]} × {emb.shape[1]} float32 ({'all' if reps is None else reps} "
                  f"repetitions averaged); norm mean {norms.mean() if norms.size else 0:.4g}, "
                  f"min {norms.min() if norms.size else 0:.4g}, max {norms.max() if norms.size else 0:.4g}; "
                  f"finite: {'yes' if np.isfinite(emb).all() else 'NO'}", highlight=False)


@app.command()
def predict(
    run: str = typer.Option(..., "--run", help=RUN_HELP),
    eeg: Path = typer.Option(..., "--eeg", help=EEG_HELP),
    gallery: Path = typer.Option(..., "--gallery", help="Feature file or folder (bench features .npz, ATM .pt, NICE .npy)."),
    partition: str = typer.Option("test", "--partition", help="Which rows of the feature file: test | train."),
    table: str = typer.Option("image", "--table", help="image (default) | centroid (NICE-style concept centres)."),
    top: int = typer.Option(5, "--top", help="Gallery items listed per EEG row."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Write eeg_row,rank,gallery_row,item,score here."),
    results_dir: Optional[Path] = typer.Option(None, "--results", "--results-dir", help=RESULTS_HELP),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    batch_size: int = typer.Option(1024, "--batch-size", help="Rows per encoder call (the evaluator's: 1024)."),
) -> None:
    """Rank gallery images for each row of an EEG file with a finished run's model (the evaluator's similarity)."""
    from rich.markup import escape

    from bench.saved_model import predict as run_predict

    saved = _open_saved_run(results_dir, run, device)
    pred = run_predict(saved, eeg, gallery, partition, top, batch_size, table)
    if csv_path is not None:
        _write_predictions_csv(csv_path, pred)
        console.print(f"wrote {csv_path} ({pred.index.shape[0]} EEG rows × top {pred.index.shape[1]}) with run "
                      f"{saved.label}", highlight=False)
        return
    out = Table(title=escape(f"run {saved.label}: {eeg.name} vs {gallery.name} ({partition} {table}, "
                             f"{len(pred.names)} items)"))
    out.add_column("EEG row", justify="right")
    for r in range(pred.index.shape[1]):
        out.add_column(f"#{r + 1}", overflow="fold")
    for i, (rows, scores) in enumerate(zip(pred.index, pred.score)):
        out.add_row(str(i), *(f"{escape(pred.names[j])} ({s:.3f})" for j, s in zip(rows, scores)))
    console.print(out)


def _write_predictions_csv(path: Path, pred) -> None:
    import csv
    import io

    from bench.io import atomic_write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["eeg_row", "rank", "gallery_row", "item", "score"])
    for i, (rows, scores) in enumerate(zip(pred.index, pred.score)):
        writer.writerows([i, r + 1, int(j), pred.names[j], f"{s:.6f}"] for r, (j, s) in enumerate(zip(rows, scores)))
    atomic_write_text(path, buffer.getvalue())


# --- data: synthetic datasets and data-root checks ---------------------------------------------------------------
data_app = typer.Typer(help="Download and inspect THINGS-EEG data roots.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to create (must not exist or be empty)."),
    preset: str = typer.Option("default", "--preset", help="tiny | default | full (with --raw: tiny)"),
    seed: int = typer.Option(0, "--seed", help="Everything is a deterministic function of the seed."),
    subjects: Optional[int] = typer.Option(None, "--subjects", help="Write only the first N subjects."),
    raw: bool = typer.Option(False, "--raw", help="Write raw 1000 Hz sessions (raw_data/sub-XX/ses-YY/...), the "
                                                  "input of `bench preprocess`, instead of preprocessed data."),
) -> None:
    """Write a synthetic THINGS-EEG dataset (250 Hz format, image/text features, concept names) to --out; with --raw,
    raw 1000 Hz sessions in the OSF raw format instead."""
    if raw:
        from bench.data.synthetic_raw import generate_raw, get_raw_preset

        preset = "tiny" if preset == "default" else preset
        console.print(f"writing synthetic raw THINGS-EEG ({preset}: {get_raw_preset(preset).describe()}) to {out}")
        root = generate_raw(out, preset=preset, seed=seed, n_subjects=subjects)
        console.print(f"done: {root}; preprocess it with bench preprocess --raw-root {root} --out OUT")
        return
    from bench.data.synthetic import generate, get_preset

    console.print(f"writing synthetic THINGS-EEG ({preset}: {get_preset(preset).describe()}) to {out}")
    root = generate(out, preset=preset, seed=seed, n_subjects=subjects)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    console.print(f"done: {root} ({size / 2**20:.0f} MB); use it with --data-root {root}")


@data_app.command("check")
def data_check(
    data_root: Path = typer.Option(..., "--data-root", help="The data root to check."),
    features: Optional[Path] = typer.Option(None, "--features", help="Feature file or folder (default: searched)."),
) -> None:
    """Per subject: format, shapes, channels, sampling rate, time span, NaN/Inf; features and concepts vs EEG."""
    from bench.data.check import check_data_root

    report = check_data_root(data_root, features)
    _print_check(report)
    problems = report.all_problems()
    if problems:
        for problem in problems:
            err_console.print(f"[red]problem:[/red] {problem}", highlight=False)
        raise typer.Exit(1)
    console.print(f"[green]ok[/green]: {len(report.subjects)} subject(s) readable and consistent")


def _print_check(report) -> None:
    table = Table(title=f"bench data check: {report.eeg_dir}")
    for col in ("subject", "format", "train", "test", "channels", "sfreq", "time span", "NaN/Inf", "status"):
        table.add_column(col, overflow="fold")
    for sub in report.subjects:
        shape = lambda s: "×".join(map(str, s)) if s else "-"  # noqa: E731
        span = f"{sub.span[0]:.3f}…{sub.span[1]:.3f} s" if sub.span else "-"
        table.add_row(f"sub-{sub.subject:02d}", sub.format, shape(sub.train_shape), shape(sub.test_shape),
                      str(sub.n_channels or "-"), f"{sub.sfreq:g} Hz" if sub.sfreq else "-", span, str(sub.nonfinite),
                      "ok" if not sub.problems else f"[red]{len(sub.problems)} problem(s)[/red]")
    console.print(table)
    console.print(f"concepts: {report.n_train_concepts} train × {report.images_per_train_concept} images, "
                  f"{report.n_test_concepts} test (from {report.concept_source})")
    console.print(f"features: {report.features}; " + "; ".join(f"{k}: {v}" for k, v in report.feature_rows.items()))


@data_app.command("list-sources")
def data_list_sources() -> None:
    """What `bench data download` can fetch: each source's provider, contents, size, license and citation."""
    from bench.data.sources import load_sources

    table = Table(title="bench data download sources (bench/data/sources.yaml)", show_lines=True)
    table.add_column("source", no_wrap=True)
    for col in ("what", "layout under --to", "size", "license", "citation"):
        table.add_column(col, overflow="fold")
    for name, src in load_sources().items():
        where = f"osf.io/{src.node}" if src.provider == "osf" else f"hf:{src.repo}"
        table.add_row(f"{name}\n{where}", src.text["title"], src.text["layout"], src.text["size"],
                      src.text["license"], src.text["citation"])
    console.print(table)


@data_app.command("download")
def data_download(
    source: str = typer.Argument(..., help="A source name (bench data list-sources)."),
    to: Path = typer.Option(..., "--to", help="Folder to lay the files out in (usable as --data-root afterwards)."),
    subjects: Optional[str] = typer.Option(None, "--subjects", help="e.g. 1-10 or 1,3 (default: all listed)."),
    partitions: str = typer.Option("train,test", "--partitions", help="train, test or train,test."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (files, sizes, free disk) and stop."),
) -> None:
    """Fetch a THINGS-EEG source (OSF or Hugging Face), verify every file's hash, lay it out as bench reads it, check it."""
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    from bench.data.download import check_space, gb, make_plan, run_download
    from bench.ids import parse_optional_ids

    plan = make_plan(source, to, parse_optional_ids(subjects, "subjects"),
                     [p.strip() for p in partitions.split(",") if p.strip()])
    _print_plan(plan)
    if dry_run:
        return
    check_space(plan)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        installed = run_download(plan, progress)
    for target in installed:
        console.print(f"installed {target}", highlight=False)
    console.print(f"{plan.source.name}: {len(plan.wanted)} file(s), {gb(plan.bytes_total)}, in {plan.to}")
    _check_download(plan.to)


def _print_plan(plan) -> None:
    from bench.data.download import gb

    table = Table(title=f"plan: {plan.source.name} → {plan.to}")
    for col in ("file", "size", "hash", "goes to", "state"):
        table.add_column(col, overflow="fold")
    installed = {id(w) for w in plan.installed}
    for w in plan.wanted:
        kind = (w.remote.best_hash() or ("none",))[0]
        state = ("installed" if id(w) in installed else
                 f"resume at {gb(plan.partial[w.remote.path])}" if w.remote.path in plan.partial else "fetch")
        table.add_row(w.remote.path, gb(w.remote.size), kind, w.target + ("/ (unzipped)" if w.is_archive else ""),
                      state)
    console.print(table)
    console.print(f"{len(plan.pending)} of {len(plan.wanted)} file(s) to fetch: {gb(plan.bytes_to_fetch)} "
                  f"(of {gb(plan.bytes_total)}); disk needed ≈ {gb(plan.bytes_needed)}, free {gb(plan.free)}",
                  highlight=False)


def _check_download(to: Path) -> None:
    """`bench data check` on the download folder; absent inputs (features, images) are next steps, not failures."""
    from bench.data.check import check_data_root
    from bench.data.errors import DataRootError

    try:
        report = check_data_root(to)
    except DataRootError:
        console.print(f"no EEG subject folders in {to} yet, so bench data check was not run; download an EEG source "
                      f"into the same --to", highlight=False)
        return
    _print_check(report)
    for note in report.missing:
        console.print(f"next step: {note}", highlight=False)
    problems = [p for p in report.all_problems() if p not in report.missing]
    for problem in problems:
        err_console.print(f"[red]problem:[/red] {problem}", highlight=False)
    if problems:
        raise typer.Exit(1)
    if report.missing:
        console.print(f"{len(report.subjects)} subject(s) readable and consistent; complete the data root with the "
                      f"next step(s) above", highlight=False)
        return
    console.print(f"[green]ok[/green]: {len(report.subjects)} subject(s) readable and consistent; use --data-root {to}",
                  highlight=False)


@app.command()
def perf(
    preset: str = typer.Option("tiny", "--preset", help="tiny (smoke test) | full (one subject at THINGS-EEG scale)."),
    method: str = typer.Option("", "--method", help="Methods, comma-separated (default: nice, atm, mcdb if registered)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON here."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Use this one-subject data root of the preset's "
                                                                       "shapes instead of writing one."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Scratch parent (default: the system temp folder); "
                                                                   "full needs ~8 GB free."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch of both loops (tiny 16, full 1000)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Measured steps per loop and round (tiny 1, full 4; more on a GPU)."),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Alternating rounds of ours vs the reference (2)."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Warm-up steps per loop, not measured (tiny 1, full 2)."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the method in our trainer."),
    ray_trials: Optional[int] = typer.Option(None, "--ray-trials", help="Runs in the Ray comparison (tiny 2, full 4)."),
    ray_trial_s: Optional[float] = typer.Option(None, "--ray-trial-s", help="Seconds per Ray run (tiny 1, full 30)."),
    ray_concurrency: int = typer.Option(1, "--ray-concurrency", help="Ray trials at once (1 CPU each)."),
    skip: List[str] = typer.Option([], "--skip", help="Leave out a section: data, train or ray. Repeatable."),
) -> None:
    """Measure data loading, training throughput (ours vs a reference-style loop), evaluation and Ray overhead."""
    from bench.perf import PerfOptions, run_perf
    from bench.perf.report import tables, write_json

    opts = PerfOptions(preset=preset, methods=[m.strip() for m in method.split(",") if m.strip()], device=device,
                       data_root=data_root, workdir=workdir, batch_size=batch_size, steps=steps, rounds=rounds,
                       warmup_steps=warmup,
                       compile=compile_, ray_trials=ray_trials, ray_trial_s=ray_trial_s,
                       ray_concurrency=ray_concurrency, skip=tuple(skip))
    report = run_perf(opts, say=_say)
    for table in tables(report):
        console.print(table)
    if json_path is not None:
        write_json(report, json_path)
        console.print(f"report: {json_path}")


@app.command()
def preprocess(
    raw_root: Path = typer.Option(..., "--raw-root", help="Folder holding raw_data/sub-XX/ses-YY/raw_eeg_*.npy."),
    out: Path = typer.Option(..., "--out", help="Data root to write (usable as --data-root afterwards)."),
    profile: str = typer.Option("nice250", "--profile", help="nice250 (NICE/ATM/UBP 63×250) | official100 (17×100)."),
    subjects: Optional[str] = typer.Option(None, "--subjects", help="e.g. 1,3,5-7 (default: all found)."),
    mvnn_covariance: str = typer.Option("train", "--mvnn-covariance",
                                        help="train (NICE: no test data) | train+test (the official OSF variant)."),
    mvnn_dim: Optional[str] = typer.Option(None, "--mvnn-dim", help="epochs | time (default: the profile's)."),
    shuffle_reps: bool = typer.Option(True, "--shuffle-reps/--no-shuffle-reps",
                                      help="Shuffle merged repetitions across sessions, as both references do."),
    seed: int = typer.Option(20200220, "--seed", help="Seed of the repetition selection and shuffle (references: 20200220)."),
    sessions: int = typer.Option(4, "--sessions", help="Sessions per subject (all must exist)."),
    train_reps: int = typer.Option(2, "--train-reps", help="Repetitions kept per training image and session."),
    test_reps: int = typer.Option(20, "--test-reps", help="Repetitions kept per test image and session."),
    image_metadata: Optional[Path] = typer.Option(None, "--image-metadata",
                                                  help="image_metadata.npy to copy into --out (default: searched "
                                                       "beside --raw-root)."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Also build the float16 EEG cache entries."),
) -> None:
    """Rebuild a published THINGS-EEG view from the raw recordings (MNE epochs, MVNN, merged sessions)."""
    from bench.data.preprocess import get_profile
    from bench.data.preprocess import preprocess as run_preprocess
    from bench.ids import parse_optional_ids
    from bench.data.sidecar import SIDECAR_NAME

    console.print(f"preprocessing {raw_root} → {out} ({get_profile(profile).describe()})")
    written = run_preprocess(raw_root, out, profile, parse_optional_ids(subjects, "subjects"),
                             image_metadata=image_metadata,
                             cache=cache, mvnn_covariance=mvnn_covariance, mvnn_dim=mvnn_dim,
                             shuffle_seed=seed if shuffle_reps else None, selection_seed=seed, n_sessions=sessions,
                             reps={"train": train_reps, "test": test_reps})
    for path in written:
        console.print(f"wrote {path}", highlight=False)
    console.print(f"wrote {out / SIDECAR_NAME} (how these files were made; runs on {out} record it)", highlight=False)
    if not (out / "image_metadata.npy").is_file():
        err_console.print(f"note: no image_metadata.npy found beside {raw_root}; copy the image set's into {out} "
                          f"(or pass --image-metadata) so `bench data check --data-root {out}` can pair rows with "
                          f"images", highlight=False)
    console.print(f"done; check it with bench data check --data-root {out}")


def _parse_trackers(tracker: str | None) -> tuple[str, ...]:
    """``--tracker``; bench.tracking imports MLflow's and W&B's Ray integrations (seconds), so only when asked."""
    if not (tracker or "").strip(" ,"):
        return ()
    from bench.tracking import parse_trackers

    return parse_trackers(tracker)


def entry() -> None:
    """The `bench` program (pyproject's script, ``python -m bench``): :func:`main` on this process's arguments.

    On the way out every object the command made is frozen out of the garbage collector, so the interpreter's exit
    skips walking torch's and Ray's object graphs: 0.5 s of every command that imported torch, 1 s after a sweep,
    on the 2-core VM. What the exit still does: atexit handlers (Ray's shutdown, logging, trackers) run and the
    standard streams are flushed. What it no longer does: finalize objects caught in reference cycles, which CPython
    never promised at exit; the harness closes and renames what it writes before the command returns.
    Not in :func:`main`, which tests call in their own long-lived process."""
    import gc

    try:
        main()
    finally:
        gc.freeze()


def main(argv: Optional[list[str]] = None) -> None:
    try:
        code = app(args=argv, standalone_mode=False)  # click returns an Exit's code instead of raising it here
        if isinstance(code, int) and code:
            raise SystemExit(code)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code)
    except USER_ERRORS as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise SystemExit(1)
    except OSError as exc:
        _os_error(exc)  # a disk or permission failure that no write site turned into a StorageError: still one line
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            raise SystemExit(130)
        raise


def _os_error(exc: OSError) -> None:
    """Print a disk, folder or permission failure as one line naming the path, exit 1; re-raise anything else."""
    import errno

    from rich.markup import escape

    from bench.io import WRITE_ERRNOS, os_reason

    if exc.errno not in WRITE_ERRNOS | {errno.ENOTDIR, errno.EISDIR, errno.EIO}:
        raise exc
    where = f"{exc.filename}: " if exc.filename else ""
    err_console.print(f"[red]error:[/red] {escape(where + os_reason(exc))}", highlight=False)
    raise SystemExit(1)


if __name__ == "__main__":
    main()
