"""bench.native: C compiled at first use, cached per source/compiler/CPU, and a clean fallback when it cannot be."""
from __future__ import annotations

import stat
import threading
import warnings

import pytest

from bench import native

ADD = "int add(int a, int b) { return a + b; }\n"


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty cache and no library remembered by this process."""
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(native.ENV_SWITCH, raising=False)
    native._load_cached.cache_clear()
    yield tmp_path / "cache" / "native"
    native._load_cached.cache_clear()


def _needs_compiler():
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")


def _counting_builds(monkeypatch) -> list:
    builds, real = [], native._build
    monkeypatch.setattr(native, "_build", lambda *a: builds.append(a[-1]) or real(*a))
    return builds


def test_a_library_is_built_once_then_read_from_the_cache(fresh, monkeypatch):
    _needs_compiler()
    builds = _counting_builds(monkeypatch)
    assert native.load("adder", ADD).add(2, 3) == 5
    (so,) = fresh.glob("adder-*.so")
    native._load_cached.cache_clear()  # a new process, as far as the cache is concerned
    assert native.load("adder", ADD).add(40, 2) == 42
    assert builds == [so]
    assert native.loaded()["adder"].endswith(" ".join(native._flags()))


def test_another_source_is_another_library(fresh, monkeypatch):
    _needs_compiler()
    assert native.load("adder", ADD).add(1, 1) == 2
    assert native.load("adder", ADD.replace("a + b", "a + b + 1")).add(1, 1) == 3
    assert len(list(fresh.glob("adder-*.so"))) == 2


def test_a_damaged_cached_library_is_built_again(fresh, monkeypatch):
    _needs_compiler()
    so = native.library_path("adder", ADD, native._compiler())
    so.parent.mkdir(parents=True)
    so.write_bytes(b"\x7fELF cut short")
    assert native.load("adder", ADD).add(2, 2) == 4


def test_a_failed_build_warns_once_names_the_reason_and_leaves_no_library(fresh, monkeypatch, tmp_path):
    cc = tmp_path / "broken-cc"
    cc.write_text("#!/bin/sh\nout=\nwhile [ $# -gt 0 ]; do [ \"$1\" = -o ] && out=$2; shift; done\n"
                  "[ -n \"$out\" ] && echo 'half a library' > \"$out\"\necho 'fatal: the compiler broke' >&2\nexit 1\n")
    cc.chmod(cc.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CC", str(cc))
    with pytest.warns(RuntimeWarning, match=r"native 'adder' kernel: could not build .*the compiler broke.*PyTorch"):
        assert native.load("adder", ADD) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.load("adder", ADD) is None  # said once
    assert not list(fresh.glob("*.so")) and not list(fresh.glob(".*tmp"))


def test_no_compiler_is_said_once(fresh, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        assert native.load("adder", ADD) is None
    assert not fresh.exists()


def test_the_switch_builds_nothing(fresh, monkeypatch):
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    builds = _counting_builds(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.load("adder", ADD) is None
    assert builds == [] and not fresh.exists()


@pytest.mark.parametrize("rows,threads,chunks", [(100_000, 3, 3), (100_000, 1, 1), (20_000, 4, 1), (0, 2, 1)])
def test_row_chunks_cover_every_row_once_on_threads(rows, threads, chunks):
    seen, names, lock = [], set(), threading.Lock()

    def call(k, i, j):
        with lock:
            seen.append((k, i, j))
            names.add(threading.current_thread().name)

    assert native.run_in_row_chunks(rows, threads, call) == chunks
    seen.sort()
    assert [k for k, _, _ in seen] == list(range(chunks))
    assert seen[0][1] == 0 and seen[-1][2] == rows
    assert all(a[2] == b[1] for a, b in zip(seen, seen[1:]))
    assert (names == {threading.main_thread().name}) == (chunks == 1)  # more than one chunk: all on the pool


def test_a_forked_child_gets_threads_of_its_own():
    """The pool's threads do not survive a fork; a child that reused the parent's pool object would wait forever."""
    import os

    busy = threading.Barrier(2)
    native.run_in_row_chunks(100_000, 2, lambda k, i, j: busy.wait(5))  # the parent's pool has two threads
    threading.Event().wait(0.2)  # both idle: a pool hands work to idle threads before it starts new ones
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only when both chunks ran
        done = []
        native.run_in_row_chunks(100_000, 2, lambda k, i, j: done.append(k))
        os._exit(0 if sorted(done) == [0, 1] else 1)
    for _ in range(200):
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        threading.Event().wait(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child's chunks never ran")
