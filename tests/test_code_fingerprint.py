"""Records are tied to the code that made them: what the fingerprint covers, and a stale record is recomputed."""
import json

import pytest

import bench.evaluate
from bench.code_fingerprint import fingerprint_method
from bench.records import RunStore
from bench.execute import train_one
from bench.specs import resolve_config


def modules_of(method: str) -> set[str]:
    return set(fingerprint_method(method, resolve_config(method)["method"], "intra").modules)


def test_covers_the_method_its_bases_losses_and_the_encoders_its_config_names():
    nice = modules_of("nice")
    assert {"bench.baselines.nice", "bench.baselines.contrastive", "bench.losses", "bench.encoders.tsconv"} <= nice
    assert "bench.encoders.atms" not in nice and "bench.train" not in nice  # harness code: by scoring version
    assert {"bench.baselines.atm", "bench.encoders.atms"} <= modules_of("atm")
    mcdb = modules_of("mcdb")
    assert {"bench.methods.mcdb.model", "bench.methods.mcdb.balance", "bench.methods.mcdb.adapters", "bench.encoders.tsconv"} <= mcdb
    mcdb_atm = fingerprint_method("mcdb", {**resolve_config("mcdb")["method"], "encoder": "atms"}, "intra").modules
    assert "bench.encoders.atms" in mcdb_atm  # the encoder the config selects is part of the code


def test_digest_follows_scoring_and_protocol_versions(monkeypatch):
    cfg = resolve_config("ridge")["method"]
    base = fingerprint_method("ridge", cfg, "intra")
    assert base.digest == fingerprint_method("ridge", cfg, "intra").digest
    assert base.digest != fingerprint_method("ridge", cfg, "inter").digest  # protocols carry their own version
    monkeypatch.setattr(bench.evaluate, "SCORING_VERSION", bench.evaluate.SCORING_VERSION + 1)
    bumped = fingerprint_method("ridge", cfg, "intra")
    assert bumped.digest != base.digest
    assert bumped.changes_from(base.to_dict()) == f"scoring protocol v{base.scoring_version} -> v{bumped.scoring_version}"
    edited = {**base.to_dict(), "modules": {**base.modules, "bench.baselines.ridge": "0" * 12}}
    assert base.changes_from(edited) == "code of bench.baselines.ridge"
    assert base.changes_from(None) == "record made before code fingerprints"


def test_a_record_of_other_code_is_recomputed_not_reused(tiny_root, tmp_path):
    args = dict(method="ridge", subject=1, seed=0, data_root=tiny_root, results_dir=tmp_path, progress=False,
                sets=["protocol.val_concepts=4", "eval.kway=[2]"])
    first = train_one(**args)
    assert first.record.status == "completed" and first.record.code_fingerprint
    assert train_one(**args).skipped
    path = RunStore(tmp_path).record_path(first.record.spec_hash)
    doc = json.loads(path.read_text())
    doc["code_fingerprint"] = "an-older-version"
    doc["provenance"]["code"]["modules"]["bench.baselines.ridge"] = "0" * 12
    path.write_text(json.dumps(doc))
    again = train_one(**args)
    assert not again.skipped and again.stale == "code of bench.baselines.ridge"
    assert again.record.code_fingerprint == first.record.code_fingerprint
    assert json.loads(path.read_text())["code_fingerprint"] == first.record.code_fingerprint
