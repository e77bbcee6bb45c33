"""Issue 18: a completed record's numbers are checked on every read (ranges, and against its saved similarity
matrix), and a record is published together with its arrays or not at all."""
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from bench import record_check
from bench.evaluate import cosine_similarity, kway_accuracy, rank_counts
from bench.io import StorageError
from bench.records import COMPLETED, FAILED, CorruptRecordsError, RunRecord, RunSpec, RunStore, read_record


@pytest.fixture(autouse=True)
def fresh_process():
    """Each test reads as a new process would: no verdicts remembered from another test's identical records."""
    record_check._VERDICTS.clear()


def spec(**kw):
    base = dict(method="ridge", config={"method": {"alpha": 1.0}}, protocol="intra", subject=1, seed=0,
                data_fingerprint="abc")
    return RunSpec(**{**base, **kw})


def scored(n=20, seed=0, noise=3.0, kway=(2, 4, 10)):
    """Metrics and arrays as ZeroShotEvaluator.score makes them (the evaluator's functions, a float32 matrix)."""
    rng = np.random.default_rng(seed)
    gallery = rng.standard_normal((n, 16)).astype(np.float32)
    eeg = (gallery + noise * rng.standard_normal((n, 16))).astype(np.float32)
    sim = cosine_similarity(eeg, gallery)
    counts = rank_counts(sim, np.zeros(n, dtype=np.int64))
    metrics = {"top1": counts.topk(1), "top5": counts.topk(5), "n_test": n, "chance_top1": 100.0 / n,
               "chance_top5": 100.0 * min(5, n) / n, "mean_rank": counts.mean_rank(),
               "kway": {str(k): kway_accuracy(sim, k) for k in kway}}
    return metrics, {"eeg_embeddings": eeg, "gallery_embeddings": gallery, "similarity": sim.astype(np.float32)}


def published(tmp_path, **kw):
    store = RunStore(tmp_path)
    metrics, arrays = scored(**kw)
    path = store.publish(RunRecord(spec(), COMPLETED, metrics=metrics, code_fingerprint="c0de"), arrays)
    return store, path


def edit(path: Path, change) -> dict:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=1))
    return data


def forget_verdicts(store):
    record_check._VERDICTS.clear()
    for f in (store.runs_dir / ".verified").glob("*"):
        f.unlink()


# --- reading: sound, edited, impossible ----------------------------------------------------------------------------
def test_a_published_record_is_sound_names_its_arrays_and_caches_its_verdict(tmp_path):
    store, path = published(tmp_path)
    rec = store.read(spec().spec_hash)
    assert rec.corrupt is None and rec.arrays == f"{spec().spec_hash}.npz"
    assert json.loads(path.read_text())["arrays"] == f"{spec().spec_hash}.npz"
    assert (store.runs_dir / ".verified" / spec().spec_hash).is_file()
    assert store.is_current(spec(), "c0de") and len(store.records()) == 1


def test_an_edited_top1_is_corrupt_and_names_the_file_and_the_true_value(tmp_path):
    store, path = published(tmp_path)
    true_top1 = json.loads(path.read_text())["metrics"]["top1"]
    edit(path, lambda d: d["metrics"].update(top1=97.5))
    rec = store.read(spec().spec_hash)
    assert rec.corrupt.startswith(f"{path}: ")  # one line, naming the file, saying what is true
    assert f"top1 97.5 but its similarity matrix gives {true_top1:.6g}" in rec.corrupt and "\n" not in rec.corrupt
    assert "top5 80 is below top1 97.5" in rec.corrupt
    assert not store.is_current(spec(), "c0de")
    with pytest.raises(CorruptRecordsError, match="--skip-corrupt") as err:
        store.records()
    assert err.value.problems == [rec.corrupt]
    scan = store.scan(skip_corrupt=True)
    assert scan.records == [] and scan.corrupt == [rec.corrupt]


def test_an_edit_that_keeps_size_and_mtime_is_still_caught(tmp_path):
    """The cached verdict is keyed by the record's bytes, not its size and times (which `touch -r` restores)."""
    store, path = published(tmp_path)
    text, st = path.read_text(), path.stat()
    top1 = json.loads(text)["metrics"]["top1"]
    forged = text.replace(f'"top1": {json.dumps(top1)}', f'"top1": {json.dumps(top1 + 1.0)}', 1)
    assert forged != text and len(forged) == len(text)
    path.write_text(forged)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert "but its similarity matrix gives" in store.read(spec().spec_hash).corrupt


@pytest.mark.parametrize("change, says", [
    (lambda m: m.update(top1=-500), "top1 -500 is outside [0, 100]"),
    (lambda m: m.update(top1=100.0000001), "top1 100.0000001 is outside [0, 100]"),
    (lambda m: m.update(top5=m["top1"] - 1), "is below top1"),
    (lambda m: m.update(top1=float("nan")), "top1 nan is not a finite number"),
    (lambda m: m.update(top5="high"), "top5 'high' is not a finite number"),
    (lambda m: m.pop("top5"), "top5 is missing"),
    (lambda m: m.update(chance_top1=1.0), "chance_top1 1 but n_test 20 gives 5"),
    (lambda m: m.update(n_test=0), "n_test 0 is not a positive integer"),
    (lambda m: m.update(mean_rank=0.5), "mean_rank 0.5 is outside [1, 20]"),
    (lambda m: m["kway"].update({"1": {"top1": 50.0}}), "kway key '1' is not a k-way size"),
    (lambda m: m["kway"]["4"].update(top1=150.0), "kway 4 top1 150.0 is outside [0, 100]"),
    (lambda m: m.update(galleries={"text": {"top1": 30.0, "top5": 20.0}}), "galleries text top5 20 is below"),
])
def test_impossible_metrics_are_corrupt_with_or_without_arrays(tmp_path, change, says):
    metrics, _ = scored()
    change(metrics)
    store = RunStore(tmp_path)
    path = store.write(RunRecord(spec(), COMPLETED, metrics=metrics))  # no arrays: the ranges still hold
    assert json.loads(path.read_text())["arrays"] is None
    assert says in store.read(spec().spec_hash).corrupt
    store2, path2 = published(tmp_path / "with-arrays")
    edit(path2, lambda d: change(d["metrics"]))
    assert says in store2.read(spec().spec_hash).corrupt


@pytest.mark.parametrize("change, says", [
    (lambda m: m["kway"]["4"].update(top1=m["kway"]["4"]["top1"] + 0.5), "kway 4 top1"),
    (lambda m: m.update(top5=min(100.0, m["top5"] + 5)), "top5"),
    (lambda m: m.update(mean_rank=m["mean_rank"] + 0.25), "mean_rank"),
    (lambda m: m.update(n_test=40, chance_top1=2.5, chance_top5=12.5), "n_test 40 but its similarity matrix is 20×20"),
])
def test_any_headline_number_that_disagrees_with_the_arrays_is_corrupt(tmp_path, change, says):
    store, path = published(tmp_path)
    edit(path, lambda d: change(d["metrics"]))
    assert f"{says}" in store.read(spec().spec_hash).corrupt


def test_a_float_difference_within_tolerance_is_not_corruption(tmp_path):
    store, path = published(tmp_path)
    edit(path, lambda d: d["metrics"].update(top1=d["metrics"]["top1"] + record_check.ARRAY_TOL / 10))
    assert store.read(spec().spec_hash).corrupt is None


def test_missing_or_unreadable_arrays_make_a_completed_record_corrupt(tmp_path):
    store, path = published(tmp_path)
    npz = store.arrays_path(spec().spec_hash)
    npz.write_bytes(b"not a zip")
    assert store.read(spec().spec_hash).corrupt.startswith(f"{path}: its arrays {npz.name} are unreadable")
    npz.unlink()
    assert store.read(spec().spec_hash).corrupt == f"{path}: its arrays {npz.name} are missing"
    edit(path, lambda d: d.update(arrays="../../elsewhere.npz"))
    assert "is not the name of an .npz file beside the record" in store.read(spec().spec_hash).corrupt
    edit(path, lambda d: d.update(arrays=None))  # "no arrays were saved": only the ranges are checked
    assert store.read(spec().spec_hash).corrupt is None


def test_a_record_from_before_the_arrays_field_is_checked_against_the_npz_beside_it(tmp_path):
    store, path = published(tmp_path)
    edit(path, lambda d: (d.pop("arrays"), d["metrics"].update(top1=97.5, top5=100.0)))
    assert "top1 97.5 but its similarity matrix gives" in store.read(spec().spec_hash).corrupt
    store.arrays_path(spec().spec_hash).unlink()  # and without one, against the ranges only
    assert store.read(spec().spec_hash).corrupt is None


def test_a_record_scored_under_other_rules_is_stale_not_corrupt(tmp_path):
    from bench.evaluate import SCORING_VERSION

    store, path = published(tmp_path)
    edit(path, lambda d: (d["metrics"].update(top1=d["metrics"]["top1"] / 2),
                          d["provenance"].update(code={"scoring_version": SCORING_VERSION - 1})))
    assert store.read(spec().spec_hash).corrupt is None


def test_failed_records_are_not_checked(tmp_path):
    store = RunStore(tmp_path)
    store.write(RunRecord(spec(), FAILED, metrics={"top1": 99.0, "top5": 1.0}, error={"type": "E", "message": "m"}))
    assert store.read(spec().spec_hash).corrupt is None


def test_constant_embeddings_score_chance_and_read_back_sound(tmp_path):
    """Every row tied with every other: ties count by expectation, as the evaluator counts them."""
    n = 10
    sim = np.zeros((n, n), dtype=np.float32)
    counts = rank_counts(sim, np.zeros(n, dtype=np.int64))
    metrics = {"top1": counts.topk(1), "top5": counts.topk(5), "n_test": n, "chance_top1": 10.0, "chance_top5": 50.0,
               "mean_rank": counts.mean_rank(), "kway": {"2": kway_accuracy(sim, 2)}}
    assert metrics["top1"] == pytest.approx(10.0)
    store = RunStore(tmp_path)
    store.publish(RunRecord(spec(), COMPLETED, metrics=metrics), {"similarity": sim})
    assert store.read(spec().spec_hash).corrupt is None


def test_a_tie_made_by_float32_rounding_is_allowed_for_but_an_edit_is_not(tmp_path):
    """A producer that scores a float64 matrix and saves it as float32 may see two scores rounded into a tie: the
    recorded number may then lie anywhere between the tie lost and the tie won, and nowhere else."""
    n = 5
    sim64 = np.eye(n) * 0.5
    sim64[0, 1] = 0.5 + 1e-12  # beats query 0's target in float64; ties with it in float32
    counts64 = rank_counts(sim64, np.zeros(n, dtype=np.int64))
    metrics = {"top1": counts64.topk(1), "top5": counts64.topk(5), "n_test": n, "chance_top1": 20.0,
               "chance_top5": 100.0, "mean_rank": counts64.mean_rank(), "kway": {"2": kway_accuracy(sim64, 2)}}
    assert metrics["top1"] == pytest.approx(80.0)  # the float32 matrix alone would say 90 (the tie by expectation)
    store = RunStore(tmp_path)
    path = store.publish(RunRecord(spec(), COMPLETED, metrics=metrics), {"similarity": sim64.astype(np.float32)})
    assert store.read(spec().spec_hash).corrupt is None
    edit(path, lambda d: d["metrics"].update(top1=70.0))
    assert "top1 70 but its similarity matrix gives 80 to 100" in store.read(spec().spec_hash).corrupt


def test_a_rerun_publishing_while_a_reader_checks_is_read_again_not_called_corrupt(tmp_path, monkeypatch):
    store, path = published(tmp_path)
    forget_verdicts(store)
    second, arrays = scored(seed=1, noise=3.0)
    real_load = record_check.load_similarity

    def republish_then_load(npz):  # the reader holds the old record's bytes; a rerun replaces the pair now
        monkeypatch.setattr(record_check, "load_similarity", real_load)
        store.publish(RunRecord(spec(), COMPLETED, metrics=second, code_fingerprint="c0de"), arrays)
        forget_verdicts(store)
        return real_load(npz)

    monkeypatch.setattr(record_check, "load_similarity", republish_then_load)
    rec = store.read(spec().spec_hash)
    assert rec.corrupt is None and rec.metrics["top1"] == second["top1"]


def test_two_hundred_records_load_fast(tmp_path):
    """Verdicts are cached (runs/.verified): a folder of 200 records of sound runs reads in well under a second."""
    import time

    store = RunStore(tmp_path)
    metrics, arrays = scored(n=100, kway=(2, 4, 10, 50))
    for i in range(200):
        store.publish(RunRecord(spec(seed=i), COMPLETED, metrics=metrics), arrays)
    record_check._VERDICTS.clear()  # a new process: only the verdicts on disk are left
    t = time.perf_counter()
    assert len(store.records()) == 200
    assert time.perf_counter() - t < 2.0


# --- publishing: both or neither ------------------------------------------------------------------------------------
def leftovers(store):
    return sorted(p.name for p in store.runs_dir.iterdir() if p.is_file())


def test_disk_full_while_the_record_is_written_leaves_no_orphan_npz(tmp_path, monkeypatch):
    store = RunStore(tmp_path)
    metrics, arrays = scored()
    real_write_text = Path.write_text

    def full(self, *args, **kw):
        if ".json." in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *args, **kw)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(StorageError) as err:
        store.publish(RunRecord(spec(), COMPLETED, metrics=metrics), arrays)
    assert str(err.value) == f"cannot write {store.record_path(spec().spec_hash)}: No space left on device"
    assert err.value.errno == errno.ENOSPC and leftovers(store) == []


def test_disk_full_while_the_arrays_are_written_names_the_npz(tmp_path, monkeypatch):
    import bench.records

    def full(tmp, arrays):
        raise OSError(errno.ENOSPC, "No space left on device")  # as fh.write raises it: no file name

    monkeypatch.setattr(bench.records, "_save_npz", full)
    store = RunStore(tmp_path)
    with pytest.raises(StorageError, match=f"cannot write {store.arrays_path(spec().spec_hash)}: No space"):
        store.publish(RunRecord(spec(), COMPLETED, metrics=scored()[0]), scored()[1])
    assert leftovers(store) == []


def test_a_refused_record_rename_takes_the_arrays_back_and_leaves_no_stale_pair(tmp_path, monkeypatch):
    """The old record goes first, the arrays next, the record last: a failure at the last step leaves nothing."""
    import bench.records

    store, path = published(tmp_path)
    real_replace = os.replace

    def refuse_records(src, dst):
        if str(dst).endswith(".json"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_replace(src, dst)

    monkeypatch.setattr(bench.records.os, "replace", refuse_records)
    metrics, arrays = scored(seed=1)
    with pytest.raises(StorageError, match=f"cannot write {path}: Read-only file system"):
        store.publish(RunRecord(spec(), COMPLETED, metrics=metrics), arrays)
    assert leftovers(store) == []  # neither the old record beside the new arrays, nor the new arrays alone


class Crash(BaseException):
    """The process dies here: no handler runs (a BaseException that is not an OSError)."""


@pytest.mark.parametrize("earlier_run", [False, True])
def test_a_crash_between_the_two_renames_leaves_nothing_a_reader_sees(tmp_path, monkeypatch, earlier_run):
    """Arrays are renamed first, the record last: dying in between leaves arrays without a record (ignored, and
    replaced by the next publish), never a record without its arrays or beside an earlier run's arrays."""
    import bench.records

    store = published(tmp_path)[0] if earlier_run else RunStore(tmp_path)
    real_replace, calls = os.replace, []

    def die_at_the_second_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise Crash()
        return real_replace(src, dst)

    monkeypatch.setattr(bench.records.os, "replace", die_at_the_second_rename)
    metrics, arrays = scored(seed=1)
    with pytest.raises(Crash):
        store.publish(RunRecord(spec(), COMPLETED, metrics=metrics), arrays)
    monkeypatch.setattr(bench.records.os, "replace", real_replace)
    assert store.read(spec().spec_hash) is None and store.records() == []
    assert store.arrays_path(spec().spec_hash).is_file()  # the orphan, ignored
    store.publish(RunRecord(spec(), COMPLETED, metrics=metrics), arrays)  # the rerun replaces it
    assert store.read(spec().spec_hash).corrupt is None


def test_a_record_without_arrays_removes_an_earlier_runs_arrays(tmp_path):
    store, _ = published(tmp_path)
    store.write(RunRecord(spec(), FAILED, error={"type": "E", "message": "m"}))
    assert leftovers(store) == [f"{spec().spec_hash}.json"]


def test_an_npz_left_without_its_record_is_ignored_and_replaced(tmp_path):
    store = RunStore(tmp_path)
    store.runs_dir.mkdir(parents=True)
    store.arrays_path(spec().spec_hash).write_bytes(b"left by a crash between the two renames")
    assert store.records() == [] and store.read(spec().spec_hash) is None
    published(tmp_path)
    assert store.read(spec().spec_hash).corrupt is None


# --- the write probe -------------------------------------------------------------------------------------------------
def test_a_results_folder_that_cannot_exist_is_refused_naming_it(tmp_path):
    from bench.records import check_writable

    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match=f"results folder {tmp_path / 'file' / 'results' / 'runs'} is not "
                                           f"writable: Not a directory"):
        check_writable(tmp_path / "file" / "results")


def test_a_read_only_results_folder_is_refused_naming_it(tmp_path, monkeypatch):
    import bench.io
    from bench.records import check_writable

    def read_only(*args, dir=None, **kw):
        raise OSError(errno.EROFS, "Read-only file system", dir)

    monkeypatch.setattr(bench.io.tempfile, "mkstemp", read_only)
    with pytest.raises(StorageError, match=f"results folder {tmp_path / 'runs'} is not writable: Read-only file"):
        check_writable(tmp_path)
