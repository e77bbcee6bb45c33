"""`bench doctor`: what this machine offers the harness, checked rather than assumed."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.paths import cache_dir, env_data_root

PACKAGES = ("thingsbench", "torch", "torchvision", "accelerate", "ray", "open_clip_torch", "timm", "numpy", "pandas",
            "scipy", "mne", "matplotlib", "pyyaml", "typer")


@dataclass
class Check:
    section: str
    name: str
    value: str
    ok: bool = True


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def torchvision_status() -> tuple[str, bool]:
    """Probe in a subprocess: an unguarded torchvision crashes at import and would take this process with it."""
    code = "import torchvision, torchvision.extension as e; print('compiled ops' if e._has_ops() else 'python fallback')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if proc.returncode == 0:
        return f"imports ({proc.stdout.strip()})", True
    last = (proc.stderr.strip().splitlines() or ["?"])[-1]
    return f"FAILS to import: {last} (run: python scripts/patch_torchvision.py)", False


def devices() -> list[Check]:
    import torch

    checks = [Check("devices", "cpu", f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            bf16 = torch.cuda.is_bf16_supported()
            checks.append(Check("devices", f"cuda:{i}", f"{p.name}, {p.total_memory / 2**30:.1f} GiB, bf16={bf16}"))
    else:
        checks.append(Check("devices", "cuda", "not available (CPU only)"))
    return checks


def native_kernels() -> Check:
    """The TSConv trunk's C kernels (:mod:`bench.native`), built here or read from the cache, or why they are not."""
    import warnings

    from bench import native
    from bench.encoders import batchnorm_elu, temporal_filter

    if not native.enabled():
        return Check("devices", "native kernels", f"off ({native.ENV_SWITCH}=0): the PyTorch forms run")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        built = batchnorm_elu.library() is not None and temporal_filter.library() is not None
    if built:
        return Check("devices", "native kernels", "built: " + "; ".join(f"{k} ({v})" for k, v in native.loaded().items()))
    why = str(caught[-1].message) if caught else "not built"
    return Check("devices", "native kernels", f"not built, the PyTorch forms run (slower): {why}")


def ray_status(start: bool = True) -> Check:
    """Start and stop a tiny local Ray, as `bench run` would, in a subprocess so a hang cannot wedge doctor."""
    try:
        version = importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        return Check("ray", "ray", "not installed", ok=False)
    if not start:
        return Check("ray", "ray", f"{version} (start not tried)")
    code = ("import ray, time; t=time.time(); ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, "
            "object_store_memory=100*1024**2); r=ray.cluster_resources(); ray.shutdown(); "
            "print(f'{time.time()-t:.1f}', int(r.get('CPU', 0)))")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        return Check("ray", "ray", f"{version}; local start timed out after 120 s", ok=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return Check("ray", "ray", f"{version}; local start FAILED: {last}", ok=False)
    secs, _ = proc.stdout.split()[-2:]
    return Check("ray", "ray", f"{version}; a local Ray starts and stops ({secs} s)")


def data_roots(extra: list[Path]) -> list[Check]:
    """Data roots named by the user, by BENCH_DATA_ROOT, and generated synthetic datasets in the cache."""
    candidates = list(extra)
    if env_data_root():
        candidates.append(env_data_root())
    synth = cache_dir() / "synthetic"
    if synth.is_dir():
        candidates.extend(sorted(p for p in synth.iterdir() if p.is_dir()))
    if not candidates:
        return [Check("data", "roots", f"none found (no --data-root, BENCH_DATA_ROOT unset, nothing in {synth})")]
    checks = []
    for root in candidates:
        checks.append(Check("data", str(root), describe_root(root), ok=root.is_dir()))
    return checks


def describe_root(root: Path) -> str:
    if not root.is_dir():
        return "missing"
    subjects = sorted({p.name for p in root.rglob("sub-*") if p.is_dir()})
    features = sorted(p.name for pattern in ("*.npz", "*features*.pt", "*clip*.npy") for p in root.rglob(pattern))
    return f"{len(subjects)} subject folders; feature files: {', '.join(features[:6]) or 'none'}"


def run_checks(data_root: list[Path] | None = None, start_ray: bool = True) -> list[Check]:
    checks = [Check("python", "python", f"{platform.python_version()} ({sys.executable})"),
              Check("python", "platform", platform.platform())]
    checks += [Check("packages", k, v, ok=v != "not installed") for k, v in package_versions().items()]
    tv, ok = torchvision_status()
    checks.append(Check("packages", "torchvision ops", tv, ok=ok))
    checks += devices()
    checks.append(native_kernels())
    checks.append(ray_status(start_ray))
    checks += data_roots(list(data_root or []))
    checks.append(Check("paths", "cache", str(cache_dir())))
    return checks
