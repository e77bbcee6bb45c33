"""A method for the resume tests, loaded as a --plugin file (so Ray workers load it too).

``nice-killer`` is NICE that, once, SIGKILLs its own process in the middle of epoch ``kill_epoch`` (after that
epoch's first step): the first time only, as ``kill_marker`` (a file it creates just before) says. With
``drop_checkpoints`` set to a folder it first deletes the checkpoints there, so that only Ray Tune's copy of the last
checkpoint is left to resume from. The paths are hyper-parameters, not environment variables, because the workers of a
Ray started elsewhere do not see the test's environment; they change nothing else, so two runs that differ only in
them train identically.
"""
import os
import signal
from pathlib import Path

from bench.baselines.nice import NICE
from bench.registry import register_method


@register_method("nice-killer", description="NICE that SIGKILLs its own process once, mid-epoch (tests)")
class KillingNICE(NICE):
    defaults = {**NICE.defaults, "kill_epoch": 4, "kill_marker": "", "drop_checkpoints": ""}

    def training_loss(self, batch, state):
        hp = self.hparams
        first_step = (state.epoch - 1) * state.steps_per_epoch
        if (hp["kill_marker"] and state.epoch == hp["kill_epoch"] and state.step == first_step + 1
                and not state.recording and not Path(hp["kill_marker"]).exists()):
            Path(hp["kill_marker"]).write_text(f"{os.getpid()}\n")
            if hp["drop_checkpoints"]:
                for path in Path(hp["drop_checkpoints"]).glob("*.pt"):
                    path.unlink()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().training_loss(batch, state)
