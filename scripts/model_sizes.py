"""Model and checkpoint sizes of every built-in method at the paper's shape, without training.

Each registered method is built from its resolved config (its recipe for real data, not the synthetic one) with the
THINGS-EEG shape (63 channels × 250 samples at 250 Hz, 10 subjects, 1654 training concepts, text features) and a
1024-d (ViT-H-14) or 768-d (ViT-L-14) target, and saved exactly as a run saves its selected model. The per-epoch
training checkpoint is an estimate: the model file plus Adam's two float32 moments per trainable parameter.

    python scripts/model_sizes.py [--markdown]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench.data.channels import requested_channels
from bench.method import DataInfo
from bench.registry import METHODS
from bench.saved_model import write_model
from bench.specs import flag_overrides, resolve_config


def measure(name: str, feature_dim: int, folder: Path) -> dict:
    cfg = resolve_config(name, overrides=flag_overrides(data_root="/data/things-eeg"))
    info = DataInfo(n_chans=63, n_times=250, sfreq=250.0, ch_names=tuple(requested_channels("all63")),
                    feature_dim=feature_dim, n_subjects=10, n_train_concepts=1654, has_text=True)
    torch.manual_seed(0)
    method = METHODS.create(name, info=info, **cfg["method"])
    saved = write_model(folder / f"{name}-{feature_dim}.safetensors", method, {"schema": "size-probe"})
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    optimiser = 0 if method.closed_form else 2 * 4 * trainable  # Adam/AdamW: exp_avg and exp_avg_sq, float32
    return {"method": name, "dim": feature_dim, "parameters": saved["parameters"], "values": saved["values"],
            "model_bytes": saved["bytes"], "checkpoint_bytes": saved["bytes"] + optimiser if optimiser else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print the docs table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, dim, Path(tmp)) for name in METHODS.names() for dim in (1024, 768)]
    mb = lambda n: "—" if n is None else f"{n / 1e6:.1f} MB"  # noqa: E731
    if args.markdown:
        print("| method | features | parameters | stored values | model file | checkpoint (estimate) |")
        print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        params = f"{r['parameters'] / 1e6:.2f} M" if r["parameters"] else "— (buffers)"
        cells = [r["method"], f"{r['dim']}-d", params, f"{r['values'] / 1e6:.2f} M",
                 mb(r["model_bytes"]), mb(r["checkpoint_bytes"])]
        print("| " + " | ".join(cells) + " |" if args.markdown else "  ".join(cells))


if __name__ == "__main__":
    main()
