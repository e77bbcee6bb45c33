"""C kernels compiled on the machine that runs them, at first use, and kept in the cache.

Some steps are bound by passes over memory and per-value arithmetic that eager PyTorch cannot fuse on a CPU (a batch
norm and an ELU over a 363 MB activation: statistics, normalisation, activation and their backward are ~10 kernels,
each a pass; ``torch.compile`` was no faster there, docs/performance.md), or by copies a GEMM needs (TSConv's
overlapping windows). A few dozen lines of C each, compiled with the machine's C compiler for its own instruction
set (``-march=native``), do the same in fewer passes.

No compiler, a failed build, or ``BENCH_NATIVE=0`` leaves the library out (:func:`load` returns None, the first two
with a warning, once) and the caller runs its PyTorch form: a kernel here is only ever a faster way to compute
what the caller's fallback computes, and tests hold the two to the same float64 reference.

A library is cached as ``<cache>/native/<name>-<key>.so``, the key a hash of the source, the compiler (its path and
``--version``), the flags and the CPU (``-march=native`` code must not run on another CPU sharing the cache).
Functions are called through :mod:`ctypes`, which releases the GIL, so :func:`run_in_row_chunks` splits a call over
threads.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from bench.io import atomic_path, make_folder
from bench.paths import cache_dir

#: set to 0 to run every kernel's PyTorch fallback (A/B timing, or a machine whose compiler misbehaves)
ENV_SWITCH = "BENCH_NATIVE"
BASE_FLAGS = ("-O3", "-std=c99", "-ffp-contract=fast", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math")
#: gcc tunes some x86 CPUs (Zen 1, as a VM may report itself) for 128-bit vectors; the kernels want AVX2's 256
X86_FLAGS = ("-march=native", "-mprefer-vector-width=256")
COMPILE_TIMEOUT_S = 120

_loaded: dict[str, str] = {}      # name → what built it (for the provenance block)


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1") != "0"


def load(name: str, source: str, signatures: dict[str, list] | None = None) -> ctypes.CDLL | None:
    """The library built from C ``source`` (cached per source, compiler, flags and CPU), or None: switched off, no
    compiler, or the build failed (warned once per name). ``signatures``: function name → ctypes argument types (the
    functions return nothing)."""
    if not enabled():
        return None
    library = _load_cached(name, source)
    for function, argtypes in (signatures or {}).items():
        if library is not None and getattr(library, function).argtypes is None:
            getattr(library, function).argtypes, getattr(library, function).restype = argtypes, None
    return library


@functools.lru_cache(maxsize=None)
def _load_cached(name: str, source: str) -> ctypes.CDLL | None:
    compiler = _compiler()
    if compiler is None:
        return _give_up(name, "no C compiler: $CC, cc, gcc and clang are not on the PATH")
    path = library_path(name, source, compiler)
    try:
        if not path.exists():
            _build(compiler, source, path)
        try:
            library = ctypes.CDLL(str(path))
        except OSError:  # a damaged cache entry (a disk that filled up, a copy cut short): build it again
            _build(compiler, source, path)
            library = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        return _give_up(name, f"could not build it with {compiler}: {_reason(exc)}")
    _loaded[name] = f"{Path(compiler).name} {' '.join(_flags())}"
    return library


def library_path(name: str, source: str, compiler: str) -> Path:
    """Where the library built from ``source`` by ``compiler`` for this CPU is cached."""
    key = repr((source, compiler, _compiler_version(compiler), _flags(), _cpu_identity()))
    return cache_dir() / "native" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def _give_up(name: str, why: str) -> None:
    warnings.warn(f"native '{name}' kernel: {why}; running its PyTorch form instead (slower, the same results within "
                  f"float32 rounding; {ENV_SWITCH}=0 runs it without trying)", RuntimeWarning, stacklevel=4)
    return None


def _build(compiler: str, source: str, path: Path) -> None:
    make_folder(path.parent)
    with atomic_path(path.with_suffix(".c")) as src:
        src.write_text(source)
    with atomic_path(path) as tmp:  # a concurrent builder (another Ray trial) replaces it with the same bytes
        subprocess.run([compiler, *_flags(), "-o", str(tmp), str(path.with_suffix(".c"))], check=True,
                       capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        lines = (exc.stderr or "").strip().splitlines()
        return f"exit {exc.returncode}: " + (" | ".join(lines[-3:]) or "no message")
    return str(exc)


def _compiler() -> str | None:
    """``$CC`` if set (None when it is not an executable), else the first of cc, gcc, clang on the PATH."""
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"])
    return next((found for cc in ("cc", "gcc", "clang") if (found := shutil.which(cc))), None)


@functools.lru_cache(maxsize=None)
def _compiler_version(compiler: str) -> str:
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def _flags() -> tuple[str, ...]:
    if platform.machine().lower() in ("x86_64", "amd64"):
        return BASE_FLAGS + X86_FLAGS
    return BASE_FLAGS + ("-mcpu=native",) if platform.machine().lower() in ("arm64", "aarch64") else BASE_FLAGS


def _cpu_identity() -> str:
    """The CPU's model and instruction-set flags (``/proc/cpuinfo``; elsewhere what :mod:`platform` says)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(dict.fromkeys(line for line in lines if line.split(":")[0].strip() in wanted))


def loaded() -> dict[str, str]:
    """The native libraries this process runs, each with the compiler and flags that built it."""
    return dict(_loaded)


#: below this many rows a call runs in the calling thread: a thread hand-off costs more than it saves
MIN_ROWS_PER_THREAD = 16384
_pool: ThreadPoolExecutor | None = None
_pool_key = (0, 0)  # (pid, threads) it was made for: a forked child inherits the object but not its threads


def run_in_row_chunks(rows: int, n_threads: int, call: Callable[[int, int, int], None],
                      min_rows: int = MIN_ROWS_PER_THREAD) -> int:
    """``call(chunk, start, stop)`` over contiguous row ranges covering ``[0, rows)``, on up to ``n_threads`` threads
    with at least ``min_rows`` rows each; returns the number of chunks (a caller's per-chunk partial sums are indexed
    by ``chunk``)."""
    n = max(1, min(n_threads, rows // min_rows))
    step = -(-rows // n) if rows else 0
    bounds = [(k, k * step, min(rows, (k + 1) * step)) for k in range(n)]
    if n == 1:
        call(*bounds[0])
        return 1
    global _pool, _pool_key
    if _pool is None or _pool_key[0] != os.getpid() or _pool_key[1] < n:  # grown to the most threads asked for
        _pool, _pool_key = ThreadPoolExecutor(max_workers=n, thread_name_prefix="bench-native"), (os.getpid(), n)
    for future in [_pool.submit(call, *b) for b in bounds]:
        future.result()
    return n
