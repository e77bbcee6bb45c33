"""Make torchvision 0.28.0 importable next to a CPU-only torch. Idempotent; does nothing where its ops load.

The registry's torchvision wheel is built against CUDA torch, so its compiled ops fail to load on CPU torch, and
two unguarded ``register_fake`` decorators in ``_meta_registrations.py`` then crash the import (and with it timm and
open_clip). This guards those two the way the rest of that file is guarded. Run by the setup step (Makefile).
"""
import importlib.util
import pathlib
import subprocess
import sys


def main() -> int:
    spec = importlib.util.find_spec("torchvision")  # locate without importing: importing is what crashes
    if spec is None:
        print("torchvision is not installed; nothing to patch")
        return 0
    probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
    if probe.returncode == 0:
        print("torchvision imports as installed; no guard needed")
        return 0
    if "torchvision::nms" not in probe.stderr:
        print(probe.stderr, file=sys.stderr)
        print("torchvision fails to import for a reason this guard does not fix", file=sys.stderr)
        return 1
    path = pathlib.Path(spec.origin).with_name("_meta_registrations.py")
    src = out = path.read_text()
    for op in ("nms", "qnms"):
        old = f'@torch.library.register_fake("torchvision::{op}")'
        new = (f'@(torch.library.register_fake("torchvision::{op}") '
               f'if torchvision.extension._has_ops() else (lambda f: f))')
        if new not in out:
            out = out.replace(old, new)
    if out == src:
        print("torchvision: already guarded or nothing to guard")
        return 0
    path.write_text(out)
    for pyc in path.parent.glob("__pycache__/_meta_registrations.*.pyc"):
        pyc.unlink()
    print(f"torchvision: guarded the nms/qnms fake registrations in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
