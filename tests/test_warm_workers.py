"""Warm Ray workers: one process serves several trials (Tune's actor reuse) and keeps the averaged EEG it opened, yet
a run's numbers do not depend on what ran before it in that process."""
import json
import subprocess

import numpy as np
import pytest

from bench.data.cache import MEANS
from bench.data.dataset import ThingsEEG
from bench.grid import SweepRequest, run_sweep
from bench.ray_scheduler import RayOptions
from conftest import BENCH
from test_resume import same_extras

SETS = ("protocol.val_concepts=4", "train.epochs=4", "train.batch_size=16", "train.num_threads=1")


@pytest.mark.ray
def test_a_run_after_others_in_a_warm_worker_equals_a_fresh_process_run(ray_session, tiny_root, tmp_path):
    """NICE and MCDB, two seeds each, at concurrency 1: one worker process computes all four. The one it computed
    last (after three runs had left their weights, RNG draws, threads and opened data in that process) must equal,
    number for number and tensor for tensor, the same spec computed by `bench train` in a fresh process."""
    req = SweepRequest(methods=["nice", "mcdb"], subjects="1", seeds="0,1", data_root=tiny_root,
                       results_dir=tmp_path / "warm", sets=SETS)
    result = run_sweep(req, RayOptions(max_concurrent=1), printer=lambda s: None)
    assert len(result.records) == 4 and all(r.status == "completed" for r in result.records)
    pids = {r.provenance["node"]["pid"] for r in result.records}
    assert len(pids) == 1, f"the trials did not share a warm worker: pids {pids}"
    last = max(result.records, key=lambda r: (r.provenance["started_at"], r.provenance["finished_at"]))
    fresh = subprocess.run([BENCH, "train", "--method", last.spec.method, "--subject", "1", "--seed",
                            str(last.spec.seed), "--data-root", str(tiny_root), "--results-dir", str(tmp_path / "fresh"),
                            "--quiet", *[a for s in SETS for a in ("--set", s)]], capture_output=True, text=True,
                           timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    (path,) = (tmp_path / "fresh" / "runs").glob("*.json")
    ref = json.loads(path.read_text())
    assert ref["spec_hash"] == last.spec_hash and ref["provenance"]["node"] is None  # outside Ray: no node
    assert ref["metrics"] == last.metrics  # headline, k-way, the whole validation curve
    same_extras(last.extras, tmp_path / "warm" / "runs", ref["extras"], tmp_path / "fresh" / "runs")


def test_averaged_eeg_is_opened_once_per_process_and_read_only(tiny_root):
    """The memo serves the same array to the next run in the process, and that array cannot be changed in place:
    a run that tried would raise, not alter what the next run reads."""
    MEANS.clear()
    ds = ThingsEEG.open(tiny_root)
    first = ds.load_train(1)
    again = ThingsEEG.open(tiny_root).load_train(1)
    assert again is first and not first.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        first[0, 0, 0] = 1.0
    occipital = ThingsEEG.open(tiny_root, channels="occipital17")
    other = occipital.load_train(1)  # another selection: another entry, the same numbers
    assert other is not first and np.array_equal(other, first[:, [ds.ch_names.index(c) for c in occipital.ch_names]])
    MEANS.clear()
    assert ThingsEEG.open(tiny_root).load_train(1) is not first  # cleared: read again, equal values


def test_tunes_copy_of_an_epoch_checkpoint_is_a_hard_link_that_outlives_the_original(tmp_path):
    """Tune persists each reported checkpoint into its storage (bench.tune_storage): a hard link to the
    results folder's immutable file, not a copy; the trial's resume still works when the original is gone."""
    import pickle

    from ray.train._internal.storage import _pyarrow_fs_copy_files  # what Tune's persist_current_checkpoint calls

    from bench.checkpoint import FILE_NAME, adopt, tune_checkpoint, write_checkpoint
    from bench.tune_storage import tune_storage

    original = tmp_path / "runs" / ".checkpoints" / "abc.pt"
    original.parent.mkdir(parents=True)
    write_checkpoint(original, {"format": "thingsbench-checkpoint/1", "epoch": 3, "weights": [1.0, 2.0]})
    storage = pickle.loads(pickle.dumps(tune_storage()))  # as the trial receives it from the driver
    persisted = tmp_path / "ray" / "trial" / "checkpoint_000002"
    with tune_checkpoint(original) as reported:
        storage.create_dir(str(persisted))
        _pyarrow_fs_copy_files(reported.path, str(persisted), source_filesystem=reported.filesystem,
                               destination_filesystem=storage)
    assert (persisted / FILE_NAME).stat().st_ino == original.stat().st_ino
    assert not [p for p in original.parent.iterdir() if p.name.startswith(".tune-")]  # the staging folder is gone
    original.unlink()  # the results folder lost its checkpoint: Tune's link still holds it
    assert adopt(persisted, original) and original.read_bytes() == (persisted / FILE_NAME).read_bytes()
