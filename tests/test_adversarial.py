"""Adversarial methods (tests/adversarial_methods.py, loaded with --plugin) through `bench train` and `bench run` (Ray):
none may be recorded `completed` above chance."""
import json
import subprocess
from pathlib import Path

import pytest

from conftest import BENCH

PLUGIN = str(Path(__file__).with_name("adversarial_methods.py"))
QUICK = ["--set", "protocol.val_concepts=4", "--set", "train.epochs=3", "--set", "train.batch_size=64",
         "--set", "eval.kway=[2]"]

#: method → (expected status, what the record's error message must say; None for a completed run at chance)
EXPECTED = {
    "adv-constant": ("completed", None),
    "adv-zero": ("completed", None),
    "adv-nan": ("failed", "EEG embeddings of NanEmbedding.encode_eeg"),
    "adv-diverge": ("failed", "training loss is not finite"),
    "adv-hungarian": ("failed", "Hungarian.encode_eeg is not per-sample"),
    "adv-peek": ("failed", "the test partition was accessed before evaluation"),
}


def check_record(rec: dict) -> None:
    status, message = EXPECTED[rec["method"]]
    assert rec["status"] == status, (rec["method"], rec.get("error"))
    if status == "completed":  # chance exactly: a query-independent embedding ranks every target by expectation
        m = rec["metrics"]
        assert m["top1"] == pytest.approx(m["chance_top1"]) and m["top5"] == pytest.approx(m["chance_top5"])
        assert m["kway"]["2"]["top1"] == pytest.approx(50.0)
    else:
        assert message in rec["error"]["message"], rec["error"]["message"]


def records(results: Path) -> dict[str, dict]:
    out = {}
    for path in (results / "runs").glob("*.json"):
        rec = json.loads(path.read_text())
        out[rec["method"]] = rec
    return out


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_adversary_through_bench_train(method, tiny_root, tmp_path):
    out = subprocess.run([BENCH, "--plugin", PLUGIN, "train", "--method", method, "--subject", "1",
                          "--data-root", str(tiny_root), "--results-dir", str(tmp_path), "--quiet", *QUICK],
                         capture_output=True, text=True, timeout=300)
    status, message = EXPECTED[method]
    assert out.returncode == (0 if status == "completed" else 1), out.stdout + out.stderr
    if message:
        assert message in out.stderr
    check_record(records(tmp_path)[method])


@pytest.mark.ray
def test_adversaries_through_bench_run_on_ray(ray_session, tiny_root, tmp_path):
    out = subprocess.run([BENCH, "--plugin", PLUGIN, "run", "--method", ",".join(sorted(EXPECTED)), "--subjects", "1",
                          "--data-root", str(tiny_root), "--results-dir", str(tmp_path), "--address", ray_session,
                          *QUICK], capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stdout + out.stderr  # some runs failed, and the sweep says so
    found = records(tmp_path)
    assert sorted(found) == sorted(EXPECTED), out.stdout + out.stderr
    for rec in found.values():
        check_record(rec)


PLUGIN_SOURCE = '''
from bench.baselines.ridge import Ridge
from bench.registry import register_method


@register_method("ridge-edited", description="ridge from a plugin file that the test edits")
class EditedRidge(Ridge):
    pass
'''


@pytest.mark.ray
def test_editing_a_plugin_recomputes_its_runs(ray_session, tiny_root, tmp_path):
    plugin = tmp_path / "my_ridge.py"
    plugin.write_text(PLUGIN_SOURCE)

    def sweep():
        out = subprocess.run([BENCH, "--plugin", str(plugin), "run", "--method", "ridge-edited", "--subjects", "1,2",
                              "--data-root", str(tiny_root), "--results-dir", str(tmp_path / "results"),
                              "--address", ray_session, "--set", "protocol.val_concepts=4", "--set", "eval.kway=[2]"],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        return " ".join(out.stdout.split())  # the summary may wrap at the console's width

    first = sweep()
    assert "2 done, 0 reused" in first and "stale" not in first
    fingerprints = {r["code_fingerprint"] for r in records_list(tmp_path / "results")}
    assert "0 done, 2 reused" in sweep()  # unchanged plugin: reused
    plugin.write_text(PLUGIN_SOURCE.replace("    pass", "    defaults = {**Ridge.defaults}"))
    third = sweep()
    assert "2 stale record(s) recomputed: ridge-edited: code of plugin:my_ridge.py" in third, third
    assert "2 done, 0 reused" in third
    now = records_list(tmp_path / "results")
    assert len(now) == 2 and {r["code_fingerprint"] for r in now}.isdisjoint(fingerprints)
    assert all(r["provenance"]["code"]["modules"]["plugin:my_ridge.py"] for r in now)


def records_list(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
