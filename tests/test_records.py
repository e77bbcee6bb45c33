"""Run specs hash stably, records round-trip atomically, tampering and bad files are named, claims exclude."""
import json

import pytest

from bench.records import COMPLETED, FAILED, RecordError, RunRecord, RunSpec, RunStore, read_record


def spec(**kw):
    base = dict(method="ridge", config={"train": {"lr": 0.1}, "method": {"alpha": 1.0}}, protocol="intra",
                subject=1, seed=0, data_fingerprint="abc")
    return RunSpec(**{**base, **kw})


def test_spec_hash_is_stable_and_sensitive():
    a = spec()
    assert a.spec_hash == spec(config={"method": {"alpha": 1.0}, "train": {"lr": 0.1}}).spec_hash  # key order
    assert len({a.spec_hash, spec(seed=1).spec_hash, spec(subject=2).spec_hash, spec(protocol="inter").spec_hash,
                spec(data_fingerprint="x").spec_hash, spec(variant="base").spec_hash,
                spec(config={"train": {"lr": 0.2}, "method": {"alpha": 1.0}}).spec_hash}) == 7
    assert spec(variant="+text").label == "ridge[+text] intra sub-01 seed 0"


def test_round_trip_and_listing(tmp_path):
    store = RunStore(tmp_path)
    rec = RunRecord(spec(), COMPLETED, metrics={"top1": 12.5, "top5": 40.0}, code_fingerprint="c0de")
    path = store.write(rec)
    assert path.name == f"{rec.spec_hash}.json"
    back = store.read(rec.spec_hash)
    assert back.metrics == rec.metrics and back.spec == rec.spec and back.code_fingerprint == "c0de"
    assert store.is_current(spec(), "c0de") and not store.is_current(spec(seed=3), "c0de")
    assert not store.is_current(spec(), "other code")  # made by other code: stale, not reusable
    store.write(RunRecord(spec(seed=3), FAILED, error={"type": "ValueError", "message": "x", "traceback": "..."},
                          code_fingerprint="c0de"))
    assert not store.is_current(spec(seed=3), "c0de")
    assert sorted(r.status for r in store.records()) == [COMPLETED, FAILED]
    assert [p.name for p in store.runs_dir.iterdir() if p.name.startswith(".") and p.suffix == ".tmp"] == []


def test_code_fingerprint_round_trips_outside_the_spec(tmp_path):
    store = RunStore(tmp_path)
    rec = RunRecord(spec(), COMPLETED, metrics={"top1": 1.0}, code_fingerprint="1a2b3c4d")
    assert rec.spec_hash == RunRecord(spec(), COMPLETED).spec_hash  # the same cell, whatever code computed it
    path = store.write(rec)
    assert json.loads(path.read_text())["code_fingerprint"] == "1a2b3c4d"
    assert store.read(rec.spec_hash).code_fingerprint == "1a2b3c4d"
    old = json.loads(path.read_text())
    del old["code_fingerprint"]  # records written before the field existed
    assert RunRecord.from_dict(old).code_fingerprint is None


def test_the_ablation_declaration_rides_along_outside_the_hash(tmp_path):
    declared = {"order": ["base", "+text"], "full_label": "+all (full)"}
    a = spec(variant="base", ablation=declared)
    assert a.spec_hash == spec(variant="base").spec_hash and a == spec(variant="base")  # the same run
    assert RunSpec.from_dict(a.to_dict()).ablation == declared  # through a Ray trial's config
    store = RunStore(tmp_path)
    store.write(RunRecord(a, COMPLETED, metrics={"top1": 1.0}))
    assert store.read(a.spec_hash).spec.ablation == declared
    assert "ablation" not in RunRecord(spec(), COMPLETED).to_dict()  # records of other runs keep their fields


@pytest.mark.parametrize("bad", [["base"], {"order": ["base"]}, {"order": "base", "full_label": "x"},
                                 {"order": ["a", "a"], "full_label": "x"}, {"order": [], "full_label": 3}])
def test_a_malformed_ablation_declaration_is_named(tmp_path, bad):
    data = RunRecord(spec(), COMPLETED, metrics={"top1": 1.0}).to_dict()
    (tmp_path / "r.json").write_text(json.dumps({**data, "ablation": bad}))
    with pytest.raises(RecordError, match=r"r\.json: ablation"):
        read_record(tmp_path / "r.json")


def test_tampered_or_corrupt_records_are_named(tmp_path):
    store = RunStore(tmp_path)
    path = store.write(RunRecord(spec(), COMPLETED))
    data = json.loads(path.read_text())
    data["seed"] = 5
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError, match="does not match its contents"):
        store.records()
    path.write_text("{not json")
    with pytest.raises(RecordError, match=f"{path.name} is unreadable"):
        store.records()


def test_claim_excludes_a_second_holder(tmp_path):
    store = RunStore(tmp_path)
    with store.claim(spec()) as first:
        assert first
        with store.claim(spec()) as second:  # a second open file description conflicts, as another process would
            assert not second
        with store.claim(spec(seed=9)) as other:
            assert other
    with store.claim(spec()) as again:
        assert again
