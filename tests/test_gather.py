"""state.gather: contrastive terms over the whole step, so that 2 DDP processes (gloo, CPU) and 2 accumulation chunks
train like 1 process with the whole batch (loss, MCDB's k and the weights agree within float tolerance)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.gather import StepGather
from bench.losses import clip_loss
from gather_runs import fit


def assert_same_fit(a: dict, b: dict) -> None:
    assert len(a["curve"]) == len(b["curve"]) == 3
    for ea, eb in zip(a["curve"], b["curve"]):
        assert ea.keys() == eb.keys()
        for key in ea:
            assert ea[key] == pytest.approx(eb[key], rel=1e-4, abs=1e-5), key
    for key in a["extras"]:
        assert a["extras"][key] == pytest.approx(b["extras"][key], rel=1e-4, abs=1e-5), key
    torch.testing.assert_close(a["params"], b["params"], rtol=1e-4, atol=1e-5)


def test_two_chunks_give_the_whole_batch_gradient_including_the_logit_scale():
    """The recording pass caches each chunk's rows; each chunk's loss (divided by 2, as the trainer does) then sees all
    rows: the encoder gets the whole-batch gradient through the 2× rescaled local rows, the scale gets it once."""
    torch.manual_seed(0)
    x, y = torch.randn(10, 6), F.normalize(torch.randn(10, 4), dim=-1)
    enc, raw = torch.nn.Linear(6, 4), torch.tensor(2.0, requires_grad=True)

    def loss(gather, rows):
        return clip_loss(gather(F.normalize(enc(x[rows]), dim=-1)), gather(y[rows]), raw.exp())

    loss(lambda t: t, slice(None)).backward()
    whole = [enc.weight.grad.clone(), enc.bias.grad.clone(), raw.grad.clone()]
    enc.zero_grad(), raw.grad.zero_()
    gather, chunks = StepGather(0, [10], 2), [slice(0, 5), slice(5, 10)]
    with torch.no_grad():
        for j, rows in enumerate(chunks):
            gather.begin(j, recording=True)
            loss(gather, rows)
    for j, rows in enumerate(chunks):
        gather.begin(j, recording=False)
        (loss(gather, rows) / 2).backward()
    for expected, got in zip(whole, [enc.weight.grad, enc.bias.grad, raw.grad]):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name", ["nice", "atm", "mcdb"])
def test_accumulation_trains_like_one_chunk(name):
    one, two = fit(name, "train.grad_accum=1"), fit(name, "train.grad_accum=2")
    assert_same_fit(two, one)
    if name == "mcdb":  # the balance acted, and its epoch means count each chunk once (not the recording pass)
        assert min(one["extras"]["k_img"] + one["extras"]["k_txt"]) < 1


def test_two_ddp_processes_train_like_one(tmp_path):
    """nice and mcdb on 2 gloo processes, and mcdb on 2 processes × 2 chunks, against one process with the batch."""
    runs = ["nice", "mcdb", "mcdb:2"]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    worker = str(Path(__file__).with_name("gather_ddp_worker.py"))
    out = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", worker, str(tmp_path / "ddp.pt"), *runs],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp.pt")
    single = {name: fit(name, "train.grad_accum=1") for name in ("nice", "mcdb")}
    for run in runs:
        assert ddp[run]["processes"] == 2
        assert_same_fit(ddp[run], single[run.split(":")[0]])
    assert min(single["mcdb"]["extras"]["k_img"] + single["mcdb"]["extras"]["k_txt"]) < 1
