"""Run by ``torchrun --nproc_per_node 2`` from tests/test_mcdb.py: train MCDB as DDP on CPU and report, from rank 0,
whether the replicas' parameters are still bit-identical. Arguments are ``--set`` style overrides."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from bench.registry import METHODS, PROTOCOLS  # noqa: E402
from bench.specs import data_info, resolve_config  # noqa: E402
from bench.train import Trainer  # noqa: E402
from fakes import InMemoryThingsEEG  # noqa: E402

ds = InMemoryThingsEEG(n_times=80, dim=16, n_concepts=60, per_concept=4, n_test=20, n_subjects=1)
# selection=last: each rank validates with its own BatchNorm statistics, so best-epoch picks may differ by rank
cfg = resolve_config("mcdb", sets=["protocol.val_concepts=6", "train.epochs=3", "train.batch_size=32",
                                   "train.lr=1e-2", "train.selection=last", *sys.argv[1:]])
split = PROTOCOLS.get(cfg["protocol"]["name"]).obj.from_config(cfg).split(ds, 1)
method = METHODS.create("mcdb", info=data_info(ds, split.train), **cfg["method"])
fit = Trainer(cfg["train"], 0, progress=False).fit(method, split.train, split.val)
flat = torch.cat([p.detach().flatten() for p in method.parameters()])
copies = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
dist.all_gather(copies, flat)
if dist.get_rank() == 0:
    print("RESULT " + json.dumps({"processes": fit.num_processes, "max_diff": float((copies[0] - copies[1]).abs().max()),
                                  "k_txt": fit.extras["k_txt"], "k_img": fit.extras["k_img"]}))
# leave together: a rank that exits while its peer still holds the gloo group can abort in teardown
dist.barrier()
dist.destroy_process_group()
