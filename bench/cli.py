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


from bench.data.concepts import ImageFolderError  # noqa: E402  (light modules: no torch at import)
from bench.extract import FeatureExtractionError  # noqa: E402

user_error(FeatureExtractionError)
user_error(ImageFolderError)


@app.command()
def features(
    images: Path = typer.Option(..., "--images", help="Image root in the THINGS layout (training_images/, test_images/)."),
    model: str = typer.Option(..., "--model", help="FAMILY:NAME, e.g. open_clip:ViT-H-14 or timm:resnet50.a1_in1k."),
    out: Path = typer.Option(..., "--out", help="Output .npz feature file (atomic; reused when its metadata matches)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Local checkpoint file. Default: the local cache only."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="open_clip tag (default: the model's first, "
                                             "ViT-H-14 → laion2b_s32b_b79k); timm puts the tag in the name."),
    random_init: bool = typer.Option(False, "--random-init", help="Seeded random weights, for tests and smoke runs."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Intermediate block N (0-based, -1 = last), pooled."),
    pool: Optional[str] = typer.Option(None, "--pool", help="With --layer: mean (patch tokens / spatial; default) or cls."),
    text: bool = typer.Option(True, "--text/--no-text", help="Text features of the concept prompts (open_clip, final layer)."),
    prompt_template: str = typer.Option("This picture is {concept}", "--prompt-template"),
    underscores_to_spaces: bool = typer.Option(False, "--underscores-to-spaces", help="aircraft_carrier → aircraft carrier."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float16 (storage; computed in float32)."),
    batch_size: int = typer.Option(64, "--batch-size"),
    workers: int = typer.Option(4, "--workers", help="Threads decoding images."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    force: bool = typer.Option(False, "--force", help="Recompute even when --out already matches."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Extract L2-normalised image (and text) features of a THINGS image folder with an open_clip or timm model."""
    from bench.extract import extract_features

    extract_features(images, model, out, weights=weights, pretrained=pretrained, random_init=random_init, layer=layer,
                     pool=pool, text=text, prompt_template=prompt_template, underscores_to_spaces=underscores_to_spaces,
                     dtype=dtype, batch_size=batch_size, workers=workers, device=device, force=force,
                     progress=progress, log=lambda msg: err_console.print(msg, highlight=False, markup=False))


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
