"""`bench doctor` reports real facts about this machine."""
import subprocess
import sys
from pathlib import Path

from bench.doctor import describe_root, package_versions, torchvision_status


def test_doctor_cli_reports_packages_and_devices(tmp_path):
    root = tmp_path / "data"
    (root / "sub-01").mkdir(parents=True)
    bench = Path(sys.executable).with_name("bench")
    out = subprocess.run([str(bench), "doctor", "--no-ray", "--data-root", str(root)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    for word in ("torch", "accelerate", "ray", "open_clip_torch", "torchvision ops", "cpu", "1 subject folders",
                 "native kernels"):
        assert word in out.stdout


def test_doctor_says_whether_the_native_kernels_build(monkeypatch):
    from bench import native
    from bench.doctor import native_kernels

    native._load_cached.cache_clear()
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert "not built, the PyTorch forms run (slower): native 'bn_elu' kernel: no C compiler" in native_kernels().value
    native._load_cached.cache_clear()
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    assert "off (BENCH_NATIVE=0)" in native_kernels().value
    monkeypatch.delenv("CC")
    monkeypatch.delenv(native.ENV_SWITCH)
    if native._compiler() is not None:
        assert native_kernels().value.startswith("built: bn_elu (")
    native._load_cached.cache_clear()


def test_doctor_flags_a_missing_root(tmp_path):
    bench = Path(sys.executable).with_name("bench")
    out = subprocess.run([str(bench), "doctor", "--no-ray", "--data-root", str(tmp_path / "absent")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "missing" in out.stdout


def test_package_versions_and_torchvision_guard():
    versions = package_versions()
    assert versions["torch"].startswith("2.") and versions["ray"] != "not installed"
    status, ok = torchvision_status()
    assert ok, status  # the setup step's guard makes torchvision importable next to CPU torch
    assert describe_root(Path("/nonexistent")) == "missing"
