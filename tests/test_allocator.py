"""A training process keeps the memory it frees (glibc's large-block mmaps and heap trimming off), and only there.

Each case runs in a fresh interpreter: the setting is per process and cannot be undone. The adversary is a 64 MiB
allocation, which glibc's defaults serve with its own mmap and hand back on free."""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

TESTS = Path(__file__).parent

PROBE = """
import ctypes, json, numpy as np
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL("libc.so.6"); libc.mallinfo2.restype = Info
def probe():
    big = np.ones(64 * 2**20 // 8)
    held = libc.mallinfo2()
    del big
    freed = libc.mallinfo2()
    return {"mmapped": held.hblkhd, "heap_held": held.arena, "heap_freed": freed.arena}
"""

SETUPS = {
    "untouched": "applied = None",
    "called": "from bench.allocator import keep_freed_memory; applied = keep_freed_memory()",
    # the real path of a run: a Trainer fit (test_train's linear method on in-memory data)
    "trainer": "import tempfile, test_train; from fakes import InMemoryThingsEEG\n"
               "rec = test_train.run(InMemoryThingsEEG(), tempfile.mkdtemp()); assert rec.status == 'completed'\n"
               "applied = None",
}


def measure(setup: str, **env) -> dict:
    code = PROBE + SETUPS[setup] + "\nprint(json.dumps({'applied': applied, **probe()}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=TESTS,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                              **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


BIG = 64 * 2**20


def test_glibc_defaults_map_and_return_a_large_block():
    """The premise: without the setting, the 64 MiB block is its own mmap (and so leaves on free)."""
    m = measure("untouched", BENCH_KEEP_MALLOC_DEFAULTS="")
    assert m["mmapped"] >= BIG


def test_kept_memory_serves_large_blocks_from_the_heap_and_keeps_them():
    m = measure("called", BENCH_KEEP_MALLOC_DEFAULTS="")
    assert m["applied"] is True
    assert m["mmapped"] < BIG and m["heap_held"] >= BIG
    assert m["heap_freed"] >= BIG  # not trimmed: the next step finds the pages mapped


def test_a_trainer_fit_turns_it_on():
    m = measure("trainer", BENCH_KEEP_MALLOC_DEFAULTS="")
    assert m["mmapped"] < BIG and m["heap_freed"] >= BIG


def test_the_opt_out_leaves_glibc_alone():
    m = measure("called", BENCH_KEEP_MALLOC_DEFAULTS="1")
    assert m["applied"] is False and m["mmapped"] >= BIG
