"""Issue 18 through the commands: corrupt records are refused by `bench leaderboard` (or skipped and listed with
--skip-corrupt) and recomputed by `bench run`/`bench train`; OS errors are one line naming the path, exit 1, and
`bench run` finds an unwritable results folder before Ray starts or any data is read."""
import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.cli import main
from bench.records import COMPLETED, RunRecord, RunStore
from conftest import BENCH
from test_record_integrity import edit, scored, spec

QUICK = "protocol.val_concepts=4"


def bench(*args, timeout=300, prefix=()):
    return subprocess.run([*prefix, BENCH, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def as_unprivileged() -> list[str]:
    """A command prefix under which chmod binds: nothing for a normal user; for root (CI containers), setpriv drops
    the capabilities that let root write through file permissions."""
    if os.geteuid() != 0:
        return []
    caps = "-dac_override,-dac_read_search,-fowner"
    prefix = [shutil.which("setpriv") or "setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]
    if shutil.which("setpriv") is None or subprocess.run([*prefix, "true"]).returncode != 0:
        pytest.skip("running as root without a working setpriv: chmod does not stop root's writes")
    return prefix


def three_runs(results: Path) -> list[Path]:
    store = RunStore(results)
    paths = []
    for subject in (1, 2, 3):
        metrics, arrays = scored(seed=subject)
        paths.append(store.publish(RunRecord(spec(subject=subject), COMPLETED, metrics=metrics), arrays))
    return paths


def one_line_error(out) -> str:
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


# --- bench leaderboard ----------------------------------------------------------------------------------------------
def test_leaderboard_refuses_edited_and_impossible_records_naming_each_file(tmp_path):
    edited, impossible, sound = three_runs(tmp_path)
    edit(edited, lambda d: d["metrics"].update(top1=77.5, top5=99.0))
    edit(impossible, lambda d: d["metrics"].update(top1=-500))
    out = bench("leaderboard", "--results-dir", tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr and out.stdout == ""
    assert "2 corrupt run record(s)" in out.stderr and "--skip-corrupt" in out.stderr
    assert f"{edited}: top1 77.5 but its similarity matrix gives" in out.stderr
    assert f"{impossible}: top1 -500 is outside [0, 100]" in out.stderr
    assert str(sound) not in out.stderr


def test_skip_corrupt_lists_what_it_left_out_and_goes_on(tmp_path):
    edited, _, _ = three_runs(tmp_path)
    edit(edited, lambda d: d["metrics"].update(top1=77.5, top5=99.0))
    out = bench("leaderboard", "--results-dir", tmp_path, "--skip-corrupt", "--format", "csv")
    assert out.returncode == 0, out.stderr
    assert out.stderr.startswith(f"skipped corrupt record: {edited}: top1 77.5 but its similarity matrix gives")
    subjects = [line.split(",")[2] for line in out.stdout.splitlines()[1:]]
    assert subjects == ["2", "3", "avg"] and "77.5" not in out.stdout  # sub-01's edited run is left out


def test_leaderboard_out_that_cannot_be_written_is_one_line(tmp_path):
    three_runs(tmp_path)
    (tmp_path / "file").write_text("x")
    line = one_line_error(bench("leaderboard", "--results-dir", tmp_path, "--out", tmp_path / "file" / "lb.md"))
    assert line == f"error: cannot write {tmp_path / 'file' / 'lb.md'}: Not a directory"


# --- bench run: the corrupt record is recomputed; unwritable folders are refused before Ray ---------------------------
def test_the_sweep_plan_recomputes_a_corrupt_record_with_a_note(tmp_path):
    from bench.execute import current_code
    from bench.ray_scheduler import plan

    store = RunStore(tmp_path)
    metrics, arrays = scored()
    s = spec()
    path = store.publish(RunRecord(s, COMPLETED, metrics=metrics, code_fingerprint=current_code(s).digest), arrays)
    assert plan([s], store).done == [s]
    edit(path, lambda d: d["metrics"].update(top1=50.0))
    planned = plan([s], store)
    assert planned.todo == [s] and planned.done == []
    (line,) = planned.stale_lines()
    assert line.startswith(f"1 stale record(s) recomputed: ridge: corrupt record {path}: top1 50 but its similarity")


def test_bench_run_refuses_a_read_only_results_folder_before_ray_or_data(tmp_path, monkeypatch, capsys):
    import bench.grid
    import bench.io
    import bench.ray_scheduler

    def read_only(*args, dir=None, **kw):
        raise OSError(errno.EROFS, "Read-only file system", dir)

    def too_late(*args, **kw):
        raise AssertionError("Ray was started or data was read before the results folder was probed")

    monkeypatch.setattr(bench.io.tempfile, "mkstemp", read_only)
    for module, name in ((bench.grid, "run_sweep"), (bench.grid, "expand_specs"), (bench.ray_scheduler, "init_ray")):
        monkeypatch.setattr(module, name, too_late)
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--method", "ridge", "--subjects", "1", "--results-dir", str(tmp_path / "results")])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: results folder {tmp_path / 'results' / 'runs'} is not writable: Read-only file system"


def test_bench_run_with_an_impossible_results_folder_is_one_line_and_starts_no_ray(tmp_path):
    """A real OS failure (as root too): the results folder lies under a file. The data root does not exist either:
    had the data been read first, the error would name it instead."""
    (tmp_path / "file").write_text("x")
    out = bench("run", "--method", "ridge", "--subjects", "1", "--data-root", tmp_path / "no-data",
                "--results-dir", tmp_path / "file" / "results")
    line = one_line_error(out)
    assert line == f"error: results folder {tmp_path / 'file' / 'results' / 'runs'} is not writable: Not a directory"
    assert "Ray" not in out.stdout + out.stderr


def test_a_chmod_read_only_results_folder_is_one_line_for_run_train_and_leaderboard(tmp_path):
    three_runs(tmp_path)
    runs = tmp_path / "runs"
    runs.chmod(0o555)
    try:
        prefix = as_unprivileged()
        out = bench("run", "--method", "ridge", "--subjects", "1", "--data-root", tmp_path / "no-data",
                    "--results-dir", tmp_path, prefix=prefix)
        assert one_line_error(out) == f"error: results folder {runs} is not writable: Permission denied"
        assert "Ray" not in out.stdout + out.stderr
        out = bench("train", "--method", "ridge", "--subject", "1", "--data-root", tmp_path / "no-data",
                    "--results-dir", tmp_path, prefix=prefix)
        assert one_line_error(out) == f"error: results folder {runs} is not writable: Permission denied"
        out = bench("leaderboard", "--results-dir", tmp_path, "--out", runs / "lb.md", prefix=prefix)
        assert one_line_error(out) == f"error: cannot write {runs / 'lb.md'}: Permission denied"
        out = bench("leaderboard", "--results-dir", tmp_path, prefix=prefix)  # reading needs no write
        assert out.returncode == 0 and "ridge" in out.stdout, out.stderr
        assert sorted(p.name for p in runs.iterdir() if p.is_file() and p.name.startswith(".")) == []
    finally:
        runs.chmod(0o755)


@pytest.mark.ray
def test_bench_run_recomputes_an_edited_record(ray_session, tiny_root, tmp_path):
    from bench.grid import SweepRequest, run_sweep
    from bench.ray_scheduler import RayOptions

    req = SweepRequest(methods=["ridge"], subjects="1", seeds="0", data_root=tiny_root, results_dir=tmp_path,
                       sets=(QUICK,))
    (first,) = run_sweep(req, RayOptions(), printer=lambda s: None).records
    path = RunStore(tmp_path).record_path(first.spec_hash)
    edit(path, lambda d: d["metrics"].update(top1=97.5, top5=100.0))
    said = []
    again = run_sweep(req, RayOptions(), printer=said.append)
    assert again.scheduled == 1 and again.skipped == 0
    assert any(f"corrupt record {path}: top1 97.5 but its similarity matrix gives" in line for line in said), said
    (rec,) = again.records
    assert rec.corrupt is None and rec.metrics["top1"] == first.metrics["top1"]


# --- bench train: recomputes a corrupt record; a disk that fills is one line and leaves no orphan ----------------------
@pytest.mark.slow
def test_bench_train_recomputes_an_edited_record(tiny_root, tmp_path):
    args = ["train", "--method", "ridge", "--subject", "1", "--data-root", tiny_root, "--results-dir", tmp_path,
            "--set", QUICK, "--quiet"]
    assert bench(*args).returncode == 0
    (path,) = (tmp_path / "runs").glob("*.json")
    true_top1 = json.loads(path.read_text())["metrics"]["top1"]
    edit(path, lambda d: d["metrics"].update(top1=97.5, top5=100.0))
    out = bench(*args)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"stale record recomputed: corrupt record {path}: top1 97.5" in " ".join(out.stdout.split())
    assert json.loads(path.read_text())["metrics"]["top1"] == true_top1


@pytest.mark.slow
def test_bench_train_on_a_disk_that_fills_at_the_record_is_one_line_and_leaves_no_npz(tiny_root, tmp_path,
                                                                                       monkeypatch, capsys):
    real_write_text = Path.write_text

    def full(self, *args, **kw):
        if self.name.startswith(".") and ".json." in self.name:  # the record's temporary file: after the .npz
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *args, **kw)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--method", "ridge", "--subject", "1", "--data-root", str(tiny_root), "--results-dir",
              str(tmp_path), "--set", QUICK, "--quiet"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot write {tmp_path / 'runs'}/") and err.endswith(
        ".json: No space left on device") and "\n" not in err
    assert [p.name for p in (tmp_path / "runs").iterdir() if p.is_file()] == []


def test_bench_tune_probes_the_results_folder_and_its_out_folder_first(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("x")
    cases = ((["--results-dir", file / "results"], f"results folder {file / 'results' / 'runs'}"),
             (["--results-dir", tmp_path / "results", "--out", file / "best.yaml"], f"output folder {file}"))
    for args, folder in cases:
        with pytest.raises(SystemExit) as exit_:  # the search file does not exist: it would be named if read first
            main(["tune", "--method", "ridge", "--search", str(tmp_path / "no-search.yaml"), *map(str, args)])
        assert exit_.value.code == 1
        assert capsys.readouterr().err.strip() == f"error: {folder} is not writable: Not a directory"


def test_an_os_error_no_write_site_caught_is_still_one_line(monkeypatch, capsys):
    import bench.leaderboard

    def broken_disk(*args, **kw):
        raise OSError(errno.EIO, "Input/output error", "/results/runs/[x].json")

    monkeypatch.setattr(bench.leaderboard, "write_leaderboard", broken_disk)
    with pytest.raises(SystemExit) as exit_:
        main(["leaderboard", "--results-dir", "/results"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip() == "error: /results/runs/[x].json: Input/output error"
