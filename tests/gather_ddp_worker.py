"""Run by ``torchrun --nproc_per_node 2`` from tests/test_gather.py: the fits named on the command line (``name`` or
``name:accum``) as DDP on CPU; rank 0 saves their curves and weights to the file named by the first argument."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from gather_runs import fit  # noqa: E402

out, runs = sys.argv[1], sys.argv[2:]
results = {}
for run in runs:
    accum = run.split(":")[1] if ":" in run else "1"
    results[run] = fit(run, f"train.grad_accum={accum}")
if dist.get_rank() == 0:
    torch.save(results, out)
# leave together: a rank that exits while its peer still holds the gloo group can abort in teardown
dist.barrier()
dist.destroy_process_group()
