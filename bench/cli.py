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
from bench.records import RecordError
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
USER_ERRORS: list[type[BaseException]] = [ConfigError, RegistryError, FileNotFoundError, RecordError]


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


@app.command()
def leaderboard(
    results_dir: Optional[Path] = typer.Option(None, "--results-dir", help="Results directory (default: $BENCH_RESULTS_DIR or ./results)."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="intra | inter (default: every protocol found)."),
    methods: List[str] = typer.Option([], "--methods", help="Only these methods (comma-separated or repeated); a base name brings its ablation variants."),
    fmt: str = typer.Option("md", "--format", help="md | csv | tex | html"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write here instead of printing."),
    table: Optional[str] = typer.Option(None, "--table", help="all | main | subjects | kway | ablation | timings | stats (csv: one table, default main)."),
    reported: Optional[Path] = typer.Option(None, "--reported", help="Literature numbers (default: <results-dir>/reported.csv if present)."),
    no_reported: bool = typer.Option(False, "--no-reported", help="Leave reported rows out."),
    expect_subjects: Optional[str] = typer.Option(None, "--expect-subjects", help="Subjects a complete row has, e.g. 1-10 (default: all subjects seen)."),
    expect_seeds: Optional[str] = typer.Option(None, "--expect-seeds", help="Seeds a complete row has, e.g. 0,1,2 (default: all seeds seen)."),
    metric: str = typer.Option("top1", "--metric", help="top1 | top5: the score the tests and plots compare."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Method the paired-difference plot compares against (default: the best)."),
    plots_dir: Optional[Path] = typer.Option(None, "--plots-dir", help="Also write the plots (PNG and SVG) here."),
) -> None:
    """Compare methods: tables, paired tests across subjects, plots and a self-contained HTML report."""
    from bench.leaderboard import LeaderboardError, parse_int_list, write_leaderboard
    from bench.paths import default_results_dir

    if LeaderboardError not in USER_ERRORS:  # registered here: importing it at the top would import pandas for every command
        user_error(LeaderboardError)
    result = write_leaderboard(
        results_dir or default_results_dir(), fmt, out, table=table, reported=reported, use_reported=not no_reported,
        protocol=protocol, methods=[m for item in methods for m in item.split(",") if m.strip()] or None,
        expect_subjects=parse_int_list(expect_subjects), expect_seeds=parse_int_list(expect_seeds), metric=metric,
        reference=reference, plots_dir=plots_dir)
    if result.out is None:
        typer.echo(result.text, nl=False)  # plain echo: rich would read "mcdb[+text]" as markup
    else:
        err_console.print(f"wrote {result.out}", highlight=False)
    for path in result.plots:
        err_console.print(f"wrote {path}", highlight=False)


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
