"""Methods for the sweep-accounting tests, loaded as a --plugin file (Ray workers load it too).

``ridge-exit`` kills its own worker process on sub-02 (no exception, no record: the trial just vanishes);
``ridge-counted`` appends one line per computation to ``method.counted_file`` (so a test can prove nothing ran twice),
then, on sub-02 and if ``method.gate`` is set, holds the run (and so the spec's lock) until that file exists. The paths are
hyper-parameters, not environment variables, because the test session's Ray workers started before the test did.
"""
import os
import sys
import time
from pathlib import Path

from bench.baselines.ridge import Ridge
from bench.registry import register_method


@register_method("ridge-exit", description="ridge whose process exits with code 3 on sub-02 (tests)")
class ExitingRidge(Ridge):
    defaults = {**Ridge.defaults, "counted_file": ""}

    def fit_closed_form(self, eeg, image, subject):
        if int(subject[0]) == 1:  # 0-based: sub-02
            with open(self.hparams["counted_file"], "a") as fh:
                fh.write(f"{os.getpid()} sub-02\n")
            print("ridge-exit: about to leave with os._exit(3)", file=sys.stderr, flush=True)
            os._exit(3)
        super().fit_closed_form(eeg, image, subject)


@register_method("ridge-counted", description="ridge that logs each computation to a file, then waits for a gate file (tests)")
class CountedRidge(Ridge):
    defaults = {**Ridge.defaults, "counted_file": "", "gate": ""}

    def fit_closed_form(self, eeg, image, subject):
        with open(self.hparams["counted_file"], "a") as fh:
            fh.write(f"{os.getpid()} sub-{int(subject[0]) + 1:02d}\n")
        gate = self.hparams["gate"] if int(subject[0]) == 1 else ""  # 0-based: sub-02 only
        while gate and not Path(gate).exists():
            time.sleep(0.1)
        super().fit_closed_form(eeg, image, subject)
