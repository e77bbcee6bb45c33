"""One small deterministic fit (no dropout, no BatchNorm, so that only the batch's split can change the numbers), shared
by tests/test_gather.py (one process) and tests/gather_ddp_worker.py (DDP): its per-epoch curve and final weights."""
import torch

from bench.registry import METHODS, PROTOCOLS
from bench.specs import data_info, resolve_config
from bench.train import Trainer
from fakes import InMemoryThingsEEG

#: eegproject without dropout: neither dropout masks nor BatchNorm statistics depend on how the batch is split
DETERMINISTIC = ["method.encoder=eegproject", "method.encoder_kwargs={dropout: 0.0}"]
RUNS = {
    "nice": DETERMINISTIC,
    "atm": ["method.encoder=eegproject", "method.encoder_kwargs={dropout: 0.0}", "method.text_weight=0.5"],
    "mcdb": [*DETERMINISTIC, "method.adapter_dropout=0.0", "method.mcdb_alpha=0.5"],
}
LOGGED = ("train_loss", "k_img", "k_txt", "s_img", "s_txt", "logit_scale")


def fit(name: str, *sets: str) -> dict:
    """(curve of the logged numbers per epoch, the final parameters flattened); batch 32 of ~216 rows gives 7 steps per
    epoch of 30 or 31 rows, so two processes hold 15 and 16 rows (uneven shares)."""
    ds = InMemoryThingsEEG(n_times=20, dim=16, n_concepts=60, per_concept=4, n_test=20, n_subjects=1)
    method_name = name.split(":")[0]
    cfg = resolve_config(method_name, sets=["protocol.val_concepts=6", "train.epochs=3", "train.batch_size=32",
                                            "train.lr=1e-2", "train.selection=last", "train.mixed_precision='no'",
                                            *RUNS[method_name], *sets])
    split = PROTOCOLS.get(cfg["protocol"]["name"]).obj.from_config(cfg).split(ds, 1)
    torch.manual_seed(0)  # the same initial weights in every fit of one process, and in every process
    method = METHODS.create(method_name, info=data_info(ds, split.train), **cfg["method"])
    result = Trainer(cfg["train"], 0, progress=False).fit(method, split.train, split.val)
    curve = [{k: e[k] for k in LOGGED if k in e} for e in result.curve]
    return {"processes": result.num_processes, "curve": curve, "extras": result.extras,
            "params": torch.cat([p.detach().flatten() for p in method.parameters()])}
