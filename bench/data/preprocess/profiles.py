"""The two published views ``bench preprocess`` rebuilds, as data: epoch window, rate, channels, MVNN flavour, format.

``nice250`` follows NICE's ``preprocessing/preprocessing_utils.py`` (also what ATM and UBP load); ``official100``
follows ``gifale95/eeg_encoding`` ``02_eeg_preprocessing`` (the OSF "preprocessed_data"). Both shuffle the merged
repetitions with seed 20200220.
"""
from __future__ import annotations

from dataclasses import dataclass

from bench.data.channels import OCCIPITAL_17, THINGS_63

REFERENCE_SEED = 20200220


@dataclass(frozen=True)
class Profile:
    name: str
    tmin: float
    tmax: float
    sfreq: float
    channels: tuple[str, ...]
    #: samples before this time are dropped before MVNN (NICE keeps the 250 samples from 0 s); None keeps all
    keep_from: float | None
    mvnn_dim: str  # "epochs": covariance over time within each trial; "time": over repetitions at each time point
    eeg_folder: str
    file_format: str  # the bench.data.formats name of what is written

    def describe(self) -> str:
        return (f"{self.name}: {len(self.channels)} channels, {self.tmin:g}…{self.tmax:g} s, {self.sfreq:g} Hz, "
                f"MVNN over {self.mvnn_dim}, written as {self.file_format} under {self.eeg_folder}/")


PROFILES: dict[str, Profile] = {
    "nice250": Profile("nice250", -0.2, 1.0, 250.0, THINGS_63, 0.0, "epochs", "Preprocessed_data_250Hz",
                       "nice-pickle"),
    "official100": Profile("official100", -0.2, 0.8, 100.0, OCCIPITAL_17, None, "time", "preprocessed_data",
                           "osf-npy"),
}

MVNN_DIMS = ("epochs", "time")
MVNN_COVARIANCES = ("train", "train+test")


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        from bench.errors import ConfigError

        raise ConfigError(f"unknown preprocessing profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]
