"""What the reference runners (``run_nice_reference.py``, ``run_ubp_reference.py``) share: patching a clone's source in
memory, refusing a clone whose code no longer has the patched shape, running the patched code in a child process on
the CPU, and the provenance of a run (commit, data fingerprint, load). A clone is only ever read.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path

FULL_HASH_LIMIT = 512 * 2**20  # files above this are fingerprinted by size and their first and last MiB
CUDA_SEEDING = re.compile(r"torch\.cuda\.manual_seed(_all)?\(")  # harmless without a GPU: left as they are


class RefusedRun(RuntimeError):
    """A refused run: the clone, the data root or the reference's output is not what the runner expects."""


@dataclass(frozen=True)
class Patch:
    name: str
    pattern: str  # a regular expression on the source text (re.MULTILINE); its match is replaced whole
    replacement: str  # literal text, one line at most: line numbers in tracebacks stay the clone's
    count: int | None = 1  # matches expected in the reference; None = at least one


def apply_patches(source: str, patches: list[Patch], filename: str, written_against: str) -> str:
    """``source`` with every patch applied; refuses if a pattern matches another number of times than expected."""
    for patch in patches:
        source, n = re.subn(patch.pattern, lambda _m, text=patch.replacement: text, source, flags=re.MULTILINE)
        if (patch.count is None and n == 0) or (patch.count is not None and n != patch.count):
            expected = "at least once" if patch.count is None else f"{patch.count} time(s)"
            raise RefusedRun(
                f"{filename}: the {patch.name} pattern {patch.pattern!r} matched {n} time(s), expected {expected}; "
                f"this clone's code no longer has the shape this script patches (written against {written_against}), "
                f"so it is not run")
    return source


def patch_file(path: Path, patches: list[Patch], written_against: str, what: str, check_cuda: bool = True) -> str:
    """The patched source of ``path`` (only read), checked to keep its line numbers and (unless the caller knows
    its CUDA lines are never reached) to use no CUDA any more."""
    if not path.is_file():
        raise RefusedRun(f"{path.parent}: no {path.name}; --clone must be a clone of {what}")
    source = path.read_text()
    patched = apply_patches(source, patches, str(path), written_against)
    if patched.count("\n") != source.count("\n"):  # a replacement spanning lines would shift every traceback
        raise RefusedRun(f"{path}: patching changed the number of lines; refusing to run a misaligned copy")
    leftover = [f"line {i}: {line.strip()}" for i, line in enumerate(patched.splitlines(), 1)
                if check_cuda and "cuda" in CUDA_SEEDING.sub("", line.split("#")[0])]
    if leftover:  # a device use the patches do not know (e.g. .to('cuda')) would fail or leave the CPU
        raise RefusedRun(f"{path}: CUDA use left after patching, which this script does not know how to move to the "
                         f"CPU: {'; '.join(leftover)}")
    return patched


def exec_patched(path: Path, source: str, name: str, search_path: Path | None = None) -> types.ModuleType:
    """``source`` executed as module ``name``, compiled under the clone's file name so tracebacks point into it;
    ``search_path`` (default: the file's folder, as `python <file>` sees it) goes first on sys.path."""
    sys.path.insert(0, str(search_path or path.parent))
    module = types.ModuleType(name)  # not "__main__": the file's own `if __name__` block stays idle
    module.__file__ = str(path)
    sys.modules[name] = module
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


def check_requirements(clone: Path, source: str, filename: str) -> None:
    """Every module ``source`` imports (read from its import statements) is importable here, or refuse."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    local = {n for n in names if (clone / f"{n}.py").is_file() or (clone / n).is_dir()}  # the clone's own modules
    missing = sorted(n for n in names - local
                     if n not in sys.stdlib_module_names and importlib.util.find_spec(n) is None)
    if missing:
        raise RefusedRun(f"{clone / filename} imports {', '.join(missing)}, not installed for {sys.executable} "
                         f"(pip install {' '.join(missing)})")


def subject_eeg_files(data_root: Path, subject: int) -> tuple[Path, list[Path]]:
    """(the data root's Preprocessed_data_250Hz folder, the subject's two files), checked to exist."""
    eeg_dir = data_root / "Preprocessed_data_250Hz"
    folder = eeg_dir / f"sub-{subject:02d}"
    files = [folder / "preprocessed_eeg_training.npy", folder / "preprocessed_eeg_test.npy"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise RefusedRun(f"{data_root}: not a THINGS-EEG 250 Hz data root for subject {subject}; missing "
                         f"{', '.join(missing)} (layout: Preprocessed_data_250Hz/sub-XX/preprocessed_eeg_"
                         f"{{training,test}}.npy)")
    return eeg_dir, files


def fingerprint(files: list[Path]) -> dict[str, str]:
    """sha256 per file: whole below 512 MiB, else of its size and first and last MiB (marked 'sampled:')."""
    out = {}
    for path in files:
        digest, size = hashlib.sha256(), path.stat().st_size
        with open(path, "rb") as fh:
            if size <= FULL_HASH_LIMIT:
                for block in iter(lambda: fh.read(2**22), b""):
                    digest.update(block)
                out[f"{path.parent.name}/{path.name}"] = digest.hexdigest()
            else:
                digest.update(str(size).encode())
                digest.update(fh.read(2**20))
                fh.seek(size - 2**20)
                digest.update(fh.read(2**20))
                out[f"{path.parent.name}/{path.name}"] = "sampled:" + digest.hexdigest()
    return out


def launch(script: str, spec: dict, work: Path, threads: int, quiet: bool) -> dict:
    """Run ``script --child spec.json`` in ``work`` on the CPU (stdout to work/stdout.txt, and here unless quiet);
    the child writes ``spec["child_result"]``, returned with the process's wall time."""
    spec_file = work / "spec.json"
    spec_file.write_text(json.dumps(spec, indent=1))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    with open(work / "stdout.txt", "w") as log:
        proc = subprocess.Popen([sys.executable, "-u", str(Path(script).resolve()), "--child", str(spec_file)],
                                cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            if not quiet:
                print(line, end="", flush=True)
        code = proc.wait()
    if code != 0:
        tail = (work / "stdout.txt").read_text().splitlines()[-15:]
        raise RefusedRun(f"the reference exited with status {code}; its last lines:\n" + "\n".join(tail))
    child = json.loads(Path(spec["child_result"]).read_text())
    return {**child, "process_wall_s": time.perf_counter() - start}


def git_commit(clone: Path, files: list[str]) -> tuple[str | None, bool | None]:
    """(HEAD commit, whether any of ``files`` differs from it) of the clone; (None, None) if it is not a checkout."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(clone), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")  # a plain folder inside another repository is not a clone
    commit = git("rev-parse", "HEAD") if top and Path(top).resolve() == clone.resolve() else None
    status = git("status", "--porcelain", "--", *files) if commit else None
    return commit, (bool(status) if status is not None else None)


def provenance(clone: Path, files: list[str], load_before: tuple[float, ...], timing: dict) -> dict:
    """The reference's commit and file hashes, the machine's load and the run's timing, for a result record."""
    commit, dirty = git_commit(clone, files)
    return {"reference_commit": commit, "reference_dirty": dirty,
            "reference_sha256": {f: hashlib.sha256((clone / f).read_bytes()).hexdigest() for f in files},
            "wall_s": round(timing["wall_s"], 2), "cpu_s": round(timing["cpu_s"], 2),
            "process_wall_s": round(timing["process_wall_s"], 2), "threads": timing["threads"], "device": "cpu",
            "torch": timing["torch"], "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()], "command": sys.argv}


def timed(run) -> dict:
    """Call ``run()`` and return its wall and CPU seconds (CPU time is comparable on a loaded machine)."""
    import torch

    start, cpu = time.perf_counter(), time.process_time()
    run()
    return {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def cli(argv: list[str] | None, name: str, run_child, parse_args, run_reference, keep=lambda args: {}) -> int:
    """A runner's command line: ``--child SPEC`` is the child side; otherwise ``run_reference(args, work)`` in a work
    folder (temporary unless --work-dir, kept on refusal), its record written to
    ``<out>/<name>_sub-XX_seed-S_epochs-E.json`` and the work files ``keep(args)`` ({relative path: suffix}) copied
    beside it."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return run_child(argv[1])
    args = parse_args(argv)
    work = Path(args.work_dir).resolve() if args.work_dir else Path(tempfile.mkdtemp(prefix=f"{name}-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        record = run_reference(args, work)
    except RefusedRun as exc:
        print(f"error: {exc}\n(work folder kept: {work})", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_sub-{args.subject:02d}_seed-{args.seed}_epochs-{args.epochs}"
    for rel, suffix in keep(args).items():
        if (work / rel).is_file():
            shutil.copyfile(work / rel, out / f"{stem}{suffix}")
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
    image = f" (test images by cosine: {record['top1_image']:.2f} %)" if "top1_image" in record else ""
    print(f"{name} top-1 {record['top1']:.2f} %{image}, top-5 {record['top5']:.2f} %, {record['wall_s']:.1f} s -> "
          f"{out / (stem + '.json')}")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0
