"""The selected model kept with its record, and used again: load_run, `bench embed`, `bench predict`.

Two finished tiny runs (ridge; nice with 2 epochs) and one ridge run with ``train.save_model: false`` are trained once
through the real CLI. Embedding the run's own test file reproduces the evaluator's test embeddings bit for bit: the
file goes through the same float16 cache, channel/time selection and averaging, the weights are the selected ones,
and the batches (1024 rows) and device (CPU) are the evaluator's, so every float32 sum is the same.
"""
import csv
import json
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import BENCH

from bench.cli import main
from bench.data.cache import cached_eeg
from bench.data.channels import requested_channels
from bench.records import RunRecord, RunSpec, RunStore, read_record
from bench.saved_model import (CodeChangedWarning, ModelError, find_record, load_run, model_path, open_run,
                               save_with_record)

SETS = ["--set", "protocol.val_concepts=4", "--quiet"]
TEST_FILE = "Preprocessed_data_250Hz/sub-01/preprocessed_eeg_test.npy"


def bench(*args):
    return subprocess.run([BENCH, *map(str, args)], capture_output=True, text=True, timeout=600)


def train(root, results, method, *extra) -> str:
    out = bench("train", "--method", method, "--subject", 1, "--seed", 0, "--data-root", root, "--results-dir",
                results, *SETS, *extra)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.split("runs/")[-1].split(".json")[0]


@pytest.fixture(scope="module")
def runs(tiny_root, tmp_path_factory):
    """The results folder and {name: spec hash} of three finished runs in it."""
    results = tmp_path_factory.mktemp("saved-model-results")
    hashes = {"ridge": train(tiny_root, results, "ridge"),
              "nice": train(tiny_root, results, "nice", "--set", "train.epochs=2"),
              "ridge-nosave": train(tiny_root, results, "ridge", "--set", "train.save_model=false")}
    return results, hashes


def record_of(results, spec_hash) -> dict:
    return json.loads((results / "runs" / f"{spec_hash}.json").read_text())


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`bench ARGS` in this process (quicker than a subprocess): exit code, stdout, stderr."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_model_file_is_named_by_the_record(runs):
    results, hashes = runs
    for name in ("ridge", "nice"):
        saved = record_of(results, hashes[name])["extras"]["saved_model"]
        path = results / "runs" / saved["file"]
        assert path == model_path(RunStore(results), hashes[name]) and path.stat().st_size == saved["bytes"]
        assert saved["format"] == "safetensors" and saved["tensors"] > 0
    assert record_of(results, hashes["nice"])["extras"]["saved_model"]["parameters"] > 0


@pytest.mark.parametrize("name", ["ridge", "nice"])
def test_embed_reproduces_the_runs_test_embeddings_exactly(runs, tiny_root, tmp_path, name):
    results, hashes = runs
    out = bench("embed", "--run", hashes[name][:6], "--eeg", tiny_root / TEST_FILE, "--results", results,
                "--out", tmp_path / "emb.npy")
    assert out.returncode == 0, out.stdout + out.stderr
    saved = np.load(results / "runs" / f"{hashes[name]}.npz")["eeg_embeddings"]
    assert np.array_equal(np.load(tmp_path / "emb.npy"), saved)  # bit for bit, not within a tolerance


@pytest.mark.parametrize("name", ["ridge", "nice"])
def test_predict_reproduces_the_records_top1(runs, tiny_root, tmp_path, name):
    results, hashes = runs
    out = bench("predict", "--run", f"{name}/intra/1/0" if name == "nice" else hashes[name][:4], "--eeg",
                tiny_root / TEST_FILE, "--gallery", tiny_root / "features.npz", "--results", results,
                "--csv", tmp_path / "p.csv")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    first = {int(r["eeg_row"]): int(r["gallery_row"]) for r in rows if r["rank"] == "1"}
    top1 = 100.0 * np.mean([first[i] == i for i in range(len(first))])
    assert len(rows) == 5 * len(first) == 5 * 40
    assert top1 == record_of(results, hashes[name])["metrics"]["top1"]
    # item names come from the image list beside the feature file (image_metadata.npy)
    assert rows[0]["item"].endswith(".jpg") and "/" in rows[0]["item"]


def test_predict_prints_a_table_and_embed_a_summary(runs, tiny_root, capsys):
    results, hashes = runs
    code, out, err = run_cli(capsys, "predict", "--run", hashes["ridge"][:8], "--eeg", tiny_root / TEST_FILE,
                             "--gallery", tiny_root / "features.npz", "--results", results, "--top", 2)
    assert code == 0, err
    assert "EEG row" in out and "#2" in out and "#3" not in out and ".jpg" in out
    code, out, err = run_cli(capsys, "embed", "--run", "nice/intra/1/0", "--eeg", tiny_root / TEST_FILE,
                             "--results", results)
    assert code == 0, err
    assert "40 × 1024 float32" in out and "finite: yes" in out


def test_load_run_by_prefix_and_by_address(runs):
    results, hashes = runs
    ridge = load_run(results, hashes["ridge"][:4])
    assert type(ridge).__name__ == "Ridge" and not ridge.training
    nice = load_run(results, "nice/intra/1/0")
    assert type(nice).__name__ == "NICE" and not nice.training
    assert all(not m.training for m in nice.modules())
    from safetensors.torch import load_file

    stored = load_file(results / "runs" / f"{hashes['nice']}.safetensors")
    assert all(torch.equal(stored[k], v) for k, v in nice.state_dict().items() if k in stored)


def test_several_matching_records_are_listed(runs):
    results, hashes = runs
    with pytest.raises(ModelError) as err:
        find_record(results, "ridge/intra/1/0")  # with and without train.save_model
    message = str(err.value)
    assert "2 records" in message and hashes["ridge"] in message and hashes["ridge-nosave"] in message
    assert "train.save_model" in message and str(results) in message


def test_an_ambiguous_prefix_lists_the_candidates(tmp_path):
    store, seen = RunStore(tmp_path), {}
    for seed in range(5000):  # two specs whose hashes share 4 characters (birthday: a few hundred draws)
        spec = RunSpec(method="ridge", config={}, protocol="intra", subject=1, seed=seed, data_fingerprint="x")
        if spec.spec_hash[:4] in seen:
            break
        seen[spec.spec_hash[:4]] = spec
    first = seen[spec.spec_hash[:4]]
    for s in (first, spec):
        store.write(RunRecord(s, "completed"))
    with pytest.raises(ModelError, match="ambiguous") as err:
        find_record(tmp_path, spec.spec_hash[:4])
    assert first.spec_hash in str(err.value) and spec.spec_hash in str(err.value)
    assert find_record(tmp_path, spec.spec_hash[:12]).spec_hash == spec.spec_hash
    for bad, fragment in (("abc", "at least 4 hex"), ("ffff", "no run record"), ("ridge/intra/1", "method/protocol"),
                          ("nice/intra/1/0", "no run nice/intra/1/0")):
        with pytest.raises(ModelError, match=fragment):
            find_record(tmp_path, bad)
    with pytest.raises(ModelError, match="no runs/ folder"):
        find_record(tmp_path / "nowhere", "abcd")


def test_save_model_false_writes_no_model(runs):
    results, hashes = runs
    h = hashes["ridge-nosave"]
    assert not (results / "runs" / f"{h}.safetensors").exists()
    assert "saved_model" not in record_of(results, h)["extras"]
    with pytest.raises(ModelError, match="train.save_model: false"):
        load_run(results, h)


def write_osf(path, data, ch_names, times):
    """An official-layout file (np.save'd dict) with these contents."""
    np.save(path, {"preprocessed_eeg_data": data, "ch_names": list(ch_names), "times": np.asarray(times)},
            allow_pickle=True)
    return path


def test_other_layouts_and_channel_orders_give_the_same_embeddings(runs, tiny_root, tmp_path):
    results, hashes = runs
    test = cached_eeg(tiny_root / TEST_FILE)
    trials, names = np.asarray(test.trials(), dtype=np.float32), test.header.ch_names
    flipped = write_osf(tmp_path / "flipped.npy", trials[:, :, ::-1], names[::-1], test.header.times)
    torch.save({"eeg": trials.astype(np.float16), "ch_names": names, "times": test.header.times,
                "label": np.arange(len(trials))}, tmp_path / "test.pt")
    saved = np.load(results / "runs" / f"{hashes['nice']}.npz")["eeg_embeddings"]
    for path in (flipped, tmp_path / "test.pt"):
        out = bench("embed", "--run", hashes["nice"][:6], "--eeg", path, "--results", results,
                    "--out", tmp_path / "e.npy")
        assert out.returncode == 0, out.stdout + out.stderr
        assert np.array_equal(np.load(tmp_path / "e.npy"), saved), path


def test_a_file_that_does_not_match_the_runs_selection_is_refused(runs, tiny_root, tmp_path, capsys):
    results, hashes = runs
    test = cached_eeg(tiny_root / TEST_FILE)
    trials, names, times = np.asarray(test.trials(), dtype=np.float32), test.header.ch_names, test.header.times
    occipital = requested_channels("occipital17")
    keep = [names.index(c) for c in occipital]
    cases = {
        "lacks 46 of the 63": write_osf(tmp_path / "c17.npy", trials[:, :, keep], occipital, times),
        "sampled at 100 Hz; run .* expects 250 Hz": write_osf(tmp_path / "hz.npy", trials, names, np.arange(250) / 100),
        r"gives 200 samples from 0.000 s in the window; .*expects 250 Hz and 250 samples from 0.000 s":
            write_osf(tmp_path / "shift.npy", trials, names, np.arange(250) / 250 - 0.2),
    }
    for fragment, path in cases.items():
        code, out, err = run_cli(capsys, "embed", "--run", hashes["ridge"][:6], "--eeg", path, "--results", results)
        assert code == 1 and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1 and str(path) in err.replace("\n", ""), err
        assert re.search(fragment, err), (fragment, err)


def copy_results(results, tmp_path, spec_hash) -> Path:
    """A results folder holding one run (its record and model), to edit."""
    (tmp_path / "runs").mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy(results / "runs" / f"{spec_hash}{suffix}", tmp_path / "runs")
    return tmp_path


def test_a_model_that_does_not_fit_is_a_clear_error(runs, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    results, hashes = runs
    h = hashes["ridge"]
    copy = copy_results(results, tmp_path, h)
    path = copy / "runs" / f"{h}.safetensors"
    with safe_open(str(path), "pt") as fh:
        tensors, meta = {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()
    tensors["weight"] = tensors["weight"][:, :512].contiguous()  # as if the method now had other shapes
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ModelError, match="differs from the file the record .* names .*edited or replaced"):
        load_run(copy, h[:4])
    record = read_record(copy / "runs" / f"{h}.json")  # the record updated too: the weights themselves do not fit
    from bench.saved_model import _sha256

    record.extras["saved_model"].update(bytes=path.stat().st_size, sha256=_sha256(path))
    RunStore(copy).write(record)
    with pytest.raises(ModelError, match=r"does not fit ridge as the current code builds it.*size mismatch for weight"):
        load_run(copy, h[:4])
    del tensors["weight"]  # strict: a tensor the method has but the file lacks is an error too, never a partial load
    save_file(tensors, str(path), metadata=meta)
    record.extras["saved_model"].update(bytes=path.stat().st_size, sha256=_sha256(path))
    RunStore(copy).write(record)
    with pytest.raises(ModelError, match=r"does not fit ridge .*Missing key.*weight"):
        load_run(copy, h[:4])
    path.unlink()
    with pytest.raises(ModelError, match="is missing, though the record"):
        load_run(copy, h[:4])


def test_changed_code_warns_in_one_line_but_loads(runs, tiny_root, tmp_path, capsys):
    results, hashes = runs
    h = hashes["ridge"]
    copy = copy_results(results, tmp_path, h)
    data = record_of(copy, h)
    data["code_fingerprint"] = "0" * 16
    data["provenance"]["code"]["modules"]["bench.baselines.ridge"] = "0" * 12
    (copy / "runs" / f"{h}.json").write_text(json.dumps(data))
    with pytest.warns(CodeChangedWarning, match=r"code changed since the run \(code of bench.baselines.ridge\)"):
        method = load_run(copy, h[:4])
    assert type(method).__name__ == "Ridge"
    code, out, err = run_cli(capsys, "embed", "--run", h[:4], "--eeg", tiny_root / TEST_FILE, "--results", copy)
    assert code == 0 and "40 × 1024" in out
    assert err.count("warning:") == 1 and len(err.strip().splitlines()) == 1 and "bench.baselines.ridge" in err, err
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_run(results, h[:4])  # the current code: no warning


def test_a_failed_save_is_noted_in_the_record_and_explained_on_load(runs, tmp_path):
    results, hashes = runs
    h = hashes["ridge"]
    saved = open_run(results, h)
    record = read_record(results / "runs" / f"{h}.json")
    record.extras.pop("saved_model")
    store = RunStore(tmp_path)
    save_with_record(store, record, saved.method, ds=None)  # no dataset: the metadata cannot be built
    assert "AttributeError" in record.extras["saved_model"]["error"]
    assert not model_path(store, h).exists()
    store.write(record)
    with pytest.raises(ModelError, match="has no saved model: saving it failed: AttributeError"):
        load_run(tmp_path, h)


def test_embed_gives_the_model_the_runs_subject_index_only_where_the_protocol_did(runs):
    results, hashes = runs
    saved = open_run(results, hashes["nice"])
    assert saved.meta["subject_index"] == 0 and saved.meta["dataset_subjects"] == [1, 2, 3]  # intra, sub-01
    seen = []
    saved.method.encode_eeg = lambda eeg, subject: seen.append(subject) or torch.zeros(len(eeg), 1024)
    from bench.saved_model import embed_eeg

    embed_eeg(saved, np.zeros((3, 63, 250), dtype=np.float32), batch_size=2)
    assert [s.tolist() for s in seen] == [[0, 0], [0]]
    saved.meta["subject_index"] = None  # as an inter run records it: the model is never told the subject
    seen.clear()
    embed_eeg(saved, np.zeros((3, 63, 250), dtype=np.float32))
    assert seen == [None]


def test_predict_ranks_concept_centres_and_uses_the_runs_similarity(runs, tiny_root, tmp_path, capsys):
    results, hashes = runs
    code, out, err = run_cli(capsys, "predict", "--run", hashes["ridge"][:6], "--eeg", tiny_root / TEST_FILE,
                             "--gallery", tiny_root / "features.npz", "--results", results, "--table", "centroid",
                             "--top", 1, "--csv", tmp_path / "c.csv")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "c.csv")))
    assert len(rows) == 40 and re.fullmatch(r"\d{5}_\w+", rows[0]["item"])  # concept folders name centroid rows
    from bench.evaluate import dot_similarity
    from bench.saved_model import rank_gallery

    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(6, 4)), rng.normal(size=(9, 4)) * rng.uniform(0.1, 3, size=(9, 1))
    dot = rank_gallery(q, g, 9, None, "dot")
    assert np.array_equal(dot.index, np.argsort(-dot_similarity(q, g), axis=1, kind="stable"))
    assert not np.array_equal(dot.index, rank_gallery(q, g, 9, None).index)  # the gallery norms weigh in


def test_a_record_that_cannot_be_published_takes_its_model_with_it(runs, tiny_root, tmp_path, monkeypatch, capsys):
    import bench.saved_model as saved_model
    from bench.io import StorageError

    written, real_write = [], saved_model.write_model
    monkeypatch.setattr(saved_model, "write_model", lambda path, *a: written.append(path) or real_write(path, *a))

    def disk_full(self, record, arrays=None):
        assert model_path(self, record.spec_hash).is_file()  # the model is out before the record
        raise StorageError(f"cannot write {self.record_path(record.spec_hash)}: No space left on device")

    monkeypatch.setattr(RunStore, "publish", disk_full)
    code, out, err = run_cli(capsys, "train", "--method", "ridge", "--subject", 1, "--data-root", tiny_root,
                             "--results-dir", tmp_path, *SETS)
    assert code == 1 and err.strip().endswith("No space left on device"), err
    assert len(written) == 1 and not written[0].exists()
    assert [p.name for p in (tmp_path / "runs").iterdir() if p.is_file()] == []
