"""The `bench` command line: one small function per subcommand, each calling one library function.

Errors the user can fix (bad files, unknown names, bad config keys) are printed as one clear line and exit 1;
anything else is a bug and shows its traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from bench.config import ConfigError
from bench.registry import REGISTRIES, RegistryError, load_plugin

app = typer.Typer(
    name="bench",
    help="ThingsBench: train and compare EEG-to-image decoders on THINGS-EEG under one fair protocol.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

#: Exceptions whose message is the whole story for the user. Other modules add theirs with `user_error`.
USER_ERRORS: list[type[BaseException]] = [ConfigError, RegistryError, FileNotFoundError]


def user_error(exc_type: type[BaseException]) -> type[BaseException]:
    USER_ERRORS.append(exc_type)
    return exc_type


@app.callback()
def _global(
    plugin: List[Path] = typer.Option([], "--plugin", help="Load a single-file method (or other component) first. Repeatable."),
) -> None:
    for path in plugin:
        load_plugin(path)


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


# --- data: synthetic datasets and data-root checks ---------------------------------------------------------------
from bench.data.errors import DataFormatError, FeatureFileError  # noqa: E402  (light: no numpy)

user_error(DataFormatError)
user_error(FeatureFileError)

data_app = typer.Typer(help="Inspect THINGS-EEG data roots.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to create (must not exist or be empty)."),
    preset: str = typer.Option("default", "--preset", help="tiny | default | full"),
    seed: int = typer.Option(0, "--seed", help="Everything is a deterministic function of the seed."),
    subjects: Optional[int] = typer.Option(None, "--subjects", help="Write only the first N subjects."),
) -> None:
    """Write a synthetic THINGS-EEG dataset (250 Hz format, image/text features, concept names) to --out."""
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
    problems = report.all_problems()
    if problems:
        for problem in problems:
            err_console.print(f"[red]problem:[/red] {problem}", highlight=False)
        raise typer.Exit(1)
    console.print(f"[green]ok[/green]: {len(report.subjects)} subject(s) readable and consistent")


def main(argv: Optional[list[str]] = None) -> None:
    try:
        code = app(args=argv, standalone_mode=False)  # click returns an Exit's code instead of raising it here
        if isinstance(code, int) and code:
            raise SystemExit(code)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code)
    except tuple(USER_ERRORS) as exc:  # type: ignore[misc]
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise SystemExit(1)
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            raise SystemExit(130)
        raise


if __name__ == "__main__":
    main()
