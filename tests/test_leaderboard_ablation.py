"""The ablation table's row order and full-row label come from the records (the method's declaration, copied there by
`bench run --ablation`), else from the installed method, else by name with "full" last; the leaderboard knows no
method by name."""
import dataclasses
from pathlib import Path

from bench.leaderboard import build_leaderboard, render
from leaderboard_data import MCDB_ABLATION, fixed_records
from bench.methods.mcdb.model import MCDB

GOLDEN = Path(__file__).parent / "golden"
FULL_ROW = ["base", "+text", "+adapter", "+mcdb", "+spr (full)"]


def with_ablation(records, ablation, method="mcdb"):
    """The records with ``method``'s declaration replaced (None: as records written before it was carried)."""
    return [dataclasses.replace(r, spec=dataclasses.replace(r.spec, ablation=ablation)) if r.spec.method == method
            else r for r in records]


def renamed(records, old, new):
    return [dataclasses.replace(r, spec=dataclasses.replace(r.spec, method=new)) if r.spec.method == old else r
            for r in records]


def ablation_rows(records) -> list[str]:
    return list(build_leaderboard(records, protocol="intra").ablation.variant)


def test_the_order_and_full_label_the_records_carry_are_the_tables():
    swapped = {"order": ["+mcdb", "base", "+adapter", "+text"], "full_label": "everything"}
    records = with_ablation(fixed_records(), swapped)
    assert ablation_rows(records) == ["+mcdb", "base", "+adapter", "+text", "everything"]
    # the carried declaration wins over the installed method's
    assert ablation_rows(fixed_records()) == FULL_ROW == [*MCDB.ablations, MCDB.ablation_full_label]


def test_the_declaration_most_records_carry_wins():
    records = fixed_records()
    other = {"order": ["+mcdb", "+adapter", "+text", "base"], "full_label": "odd one out"}
    first_mcdb = next(i for i, r in enumerate(records) if r.spec.method == "mcdb")
    records[first_mcdb] = with_ablation([records[first_mcdb]], other)[0]
    assert ablation_rows(records) == FULL_ROW


def test_records_without_it_read_the_installed_method_and_match_the_goldens(monkeypatch):
    bare = with_ablation(fixed_records(), None)
    assert all(r.spec.ablation is None for r in bare)
    assert render(build_leaderboard(bare), "csv", "ablation") == (GOLDEN / "leaderboard_ablation.csv").read_text()
    monkeypatch.setattr(MCDB, "ablations", dict(reversed(list(MCDB.ablations.items()))))
    monkeypatch.setattr(MCDB, "ablation_full_label", "all of it")
    assert ablation_rows(bare) == ["+mcdb", "+adapter", "+text", "base", "all of it"]


def test_a_method_nobody_declared_lists_its_variants_by_name_and_full_last():
    bare = renamed(with_ablation(fixed_records(), None), "mcdb", "not-installed")
    assert ablation_rows(bare) == ["+adapter", "+mcdb", "+text", "base", "full"]


def test_a_method_declaring_no_ablation_lists_its_variants_by_name_too():
    bare = renamed(with_ablation(fixed_records(), None), "mcdb", "ridge")  # installed, declares no variants
    assert ablation_rows(bare) == ["+adapter", "+mcdb", "+text", "base", "full"]
    assert MCDB_ABLATION["order"] == list(MCDB.ablations)  # the fixture is what a sweep of today's MCDB writes
