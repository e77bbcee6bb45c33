"""Preflight: what a run needs at its end, checked before its first epoch.

The config rules (:mod:`bench.config_rules`) check each value on its own when the config is resolved; this module
checks the values against the opened dataset, so a run that would train for hours and then fail at test time is
refused before anything is trained or recorded:

* the feature tables agree: every table has the training image features' dimension and one row per image
  (image) or concept (text, centroid) of its partition;
* the method's text features exist (``requires_text``), and every requested extra gallery (``eval.galleries``) and
  the main gallery (``eval.main_gallery``) is in the test partition's features;
* every ``eval.kway`` value is below the number of test images;
* ``data.test_repetitions`` is at most what the subject's test file holds.

The test partition stays sealed: only file headers are read (feature shapes, the EEG file's repetition count),
never a test array. :func:`bench.execute.train_one` and :func:`bench.grid.expand_specs` call :func:`check_spec`
before any record is written and before Ray is started.
"""
from __future__ import annotations

from typing import Any

from bench.errors import ConfigError
from bench.config_rules import kway_values
from bench.data.errors import FeatureFileError
from bench.records import RunSpec
from bench.registry import METHODS

#: what each extra gallery is built from, in words for the messages
GALLERY_TABLES = {"text": "text features (one prompt per concept)", "centroid": "concept centres (NICE-style)"}


def check_spec(spec: RunSpec, ds: Any) -> None:
    """Raise ConfigError or FeatureFileError (one line, naming the key or file) if ``spec`` cannot finish on ``ds``."""
    cfg = spec.config
    tables = {part: ds.feature_tables(part) for part in ("train", "test")}
    where = str(ds.feature_path)
    check_feature_tables(tables, ds, where)
    if getattr(METHODS.get(spec.method).obj, "requires_text", False) and "text" not in tables["train"]:
        raise FeatureFileError(f"{where}: method {spec.method} needs text features, but the training partition has "
                               f"only {', '.join(tables['train'])}; extract them with an open_clip model (bench "
                               f"features --model open_clip:...) or set data.features to a file that has them")
    check_galleries(cfg["eval"]["galleries"], tables["test"], where)
    main = cfg["eval"].get("main_gallery", "image")
    if main != "image" and main not in tables["test"]:
        raise ConfigError(f"eval.main_gallery: the {main} gallery needs {GALLERY_TABLES[main]} in the test features, "
                          f"but {where} holds only {', '.join(tables['test'])} there; set data.features to a file "
                          f"that has them")
    kway_values(cfg["eval"]["kway"], ds.n_test_images)
    check_test_repetitions(cfg["data"]["test_repetitions"], ds, spec.subject)


def check_feature_tables(tables: dict[str, dict[str, tuple[int, int]]], ds: Any, where: str) -> None:
    """One dimension across all tables; one row per image (image table) or per concept (text, centroid)."""
    dim = tables["train"]["image"][1]
    rows_expected = {"train": {"image": ds.n_train_images, "text": len(ds.train_concepts)},
                     "test": {"image": ds.n_test_images, "text": len(ds.test_concepts),
                              "centroid": len(ds.test_concepts)}}
    for part, found in tables.items():
        for table, (rows, d) in found.items():
            if d != dim:
                raise FeatureFileError(f"{where} ({part}): {table} features have dimension {d}, but the training "
                                       f"image features have {dim}")
            expected = rows_expected[part].get(table)
            if expected is not None and rows != expected:
                unit = "images" if table == "image" else "concepts"
                raise FeatureFileError(f"{where} ({part}): {rows} {table} feature rows, but the data has {expected} "
                                       f"{part} {unit}")


def check_galleries(galleries: list[str], test_tables: dict[str, tuple[int, int]], where: str) -> None:
    for name in galleries:
        if name != "image" and name not in test_tables:
            raise ConfigError(f"eval.galleries: the {name} gallery needs {GALLERY_TABLES[name]} in the test features, "
                              f"but {where} holds only {', '.join(test_tables)} there; drop {name} or set "
                              f"data.features to a file that has them")


def check_test_repetitions(n_reps: int | None, ds: Any, subject: int) -> None:
    if n_reps is None:
        return
    available = ds.test_repetitions(subject)  # the test file's header only
    if n_reps > available:
        raise ConfigError(f"data.test_repetitions={n_reps}: sub-{subject:02d}'s test file holds {available} "
                          f"repetitions; choose 1..{available} or null for all")
