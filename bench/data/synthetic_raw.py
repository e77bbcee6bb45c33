"""Synthetic *raw* THINGS-EEG: continuous 1000 Hz sessions with a stim channel, the input of ``bench preprocess``.

``bench synth --raw --out DIR [--preset tiny] [--seed N]`` writes::

    DIR/raw_data/sub-XX/ses-YY/raw_eeg_{training,test}.npy   np.save'd dicts as on OSF: raw_eeg_data (63 EEG + stim rows
                                                             × samples, volts), ch_names, ch_types, sfreq = 1000
    DIR/image_metadata.npy, DIR/features.npz                the concept list and features of the same synthetic world
    DIR/synthetic.json                                      preset, seed, ``"raw": true``

The design copies the real one at a small scale: each training image is shown in 2 of the 4 sessions, twice per
session; each test image 20 times per session; RSVP with a 200 ms onset asynchrony, so the 1 s responses overlap; a
few catch trials (code 99999) per session; channels stored in a scrambled order (preprocessing must reorder them).

Signal: the responses of :class:`bench.data.synthetic.SubjectModel` (the same ERP model as the preprocessed synthetic
data), :func:`evoked_templates` returns them so tests can find each condition's response at its output row. Noise:
per session, 16 slow (AR(1)) background sources through the subject's lead field (smooth, average-referenced, plus an
unstructured part) and white sensor noise,
per-channel gains that differ between sessions, and a DC offset per channel (removed by the baseline correction).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.data.atomic import atomic_directory
from bench.data.channels import THINGS_63
from bench.data.features import save_feature_set
from bench.data.synthetic import (EPOCH_TIMES, KEEP_FROM, Preset, SubjectModel, World, channel_directions,
                                  output_folder_and_count)
from bench.io import atomic_path, atomic_write_text

RAW_SFREQ = 1000
SOA_SAMPLES = 200  # 200 ms stimulus onset asynchrony (100 ms image + 100 ms blank)
PULSE_SAMPLES = 10  # stim codes last 10 ms: mne.find_events ignores 1-sample events by default
LEAD_IN, TAIL = 500, 1300  # samples before the first and after the last onset, > the −0.2…1.0 s epoch
CATCH_CODE = 99999
VOLTS = 1e-6
ERP_SHARE = 0.2  # of the model's mean ERP kept in the responses  # the model is in µV; the published raw files are in volts


@dataclass(frozen=True)
class RawPreset:
    name: str
    n_subjects: int
    n_train_concepts: int
    images_per_train_concept: int
    n_test_concepts: int
    n_categories: int
    snr: float
    n_sessions: int = 4
    sessions_per_train_image: int = 2
    train_reps_per_session: int = 2
    test_reps_per_session: int = 20
    catch_per_session: int = 6

    def world_preset(self) -> Preset:
        return Preset(f"raw-{self.name}", self.n_subjects, self.n_train_concepts, self.images_per_train_concept,
                      self.sessions_per_train_image * self.train_reps_per_session, self.n_test_concepts,
                      self.n_sessions * self.test_reps_per_session, self.n_categories, "float32", snr=self.snr)

    def describe(self) -> str:
        return (f"{self.n_subjects} subjects × {self.n_sessions} sessions; train {self.n_train_concepts} concepts × "
                f"{self.images_per_train_concept} images, each in {self.sessions_per_train_image} sessions × "
                f"{self.train_reps_per_session} reps; test {self.n_test_concepts} × {self.test_reps_per_session} reps "
                f"per session; 63 EEG + stim @ {RAW_SFREQ} Hz")


RAW_PRESETS: dict[str, RawPreset] = {
    "tiny": RawPreset("tiny", 2, 12, 2, 6, 4, snr=1.5),
}


def get_raw_preset(name: str) -> RawPreset:
    if name not in RAW_PRESETS:
        from bench.errors import ConfigError

        raise ConfigError(f"unknown raw synthetic preset {name!r}; choose one of {', '.join(RAW_PRESETS)}")
    return RAW_PRESETS[name]


def train_sessions_of(image: int, preset: RawPreset) -> list[int]:
    """The 0-based sessions that show training image ``image`` (0-based): consecutive ones, so each session gets an
    equal share when the image count is a multiple of the session count."""
    return [(image + k) % preset.n_sessions for k in range(preset.sessions_per_train_image)]


def evoked_templates(preset: str, seed: int, subject: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) noise-free responses of ``subject`` in µV, (images, 63 in NICE order, 300) over −0.2…0.996 s."""
    spec = get_raw_preset(preset)
    return _subject_responses(spec, World(spec.world_preset(), seed), seed, subject)[1:]


def _subject_responses(spec: RawPreset, world: World, seed: int,
                       subject: int) -> tuple[SubjectModel, np.ndarray, np.ndarray]:
    model = SubjectModel(spec.world_preset(), seed, subject, channel_directions())
    ipc = spec.images_per_train_concept
    train = model.evoked(world.train_u, np.repeat(world.train_z, ipc, axis=0))
    test = model.evoked(world.test_u, world.test_z)
    # The model's mean ERP is several times its image-specific part; at full size it would dominate the noise
    # covariance of the overlapping RSVP responses, which is not what real recordings look like.
    grand = np.concatenate([train, test]).mean(axis=0)
    shrink = (1 - ERP_SHARE) * grand
    return model, train - shrink, test - shrink


def _upsample(evoked: np.ndarray) -> np.ndarray:
    """(n, 63, 300) at 250 Hz over EPOCH_TIMES → (n, 63, 1000) at 1000 Hz from 0 s (linear interpolation)."""
    post = evoked[..., KEEP_FROM:]
    j = np.arange(1000)
    k, frac = j // 4, (j % 4) / 4.0
    nxt = np.minimum(k + 1, post.shape[-1] - 1)
    return ((1 - frac) * post[..., k] + frac * post[..., nxt]).astype(np.float32)


def _session_recording(codes: np.ndarray, responses: dict[int, np.ndarray], model: SubjectModel,
                       mixing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(64, samples) float32: 63 EEG rows in NICE order (volts) + stim row, for the onset sequence ``codes``."""
    from scipy.signal import lfilter

    n = LEAD_IN + SOA_SAMPLES * (len(codes) - 1) + TAIL
    ar = 0.98
    sources = lfilter([np.sqrt(1 - ar**2)], [1.0, -ar], rng.standard_normal((model.lead.shape[1], n)), axis=1)
    # Smooth, average-referenced lead fields plus an unstructured part: correlated channels, but a covariance that a
    # 250-sample trial estimates well (a near-singular one is shrunk so hard that whitening is far from exact).
    lead = model.lead - model.lead.mean(axis=0) + 0.25 * mixing
    eeg = lead @ sources + 3.0 * rng.standard_normal((63, n))
    eeg *= np.exp(0.15 * rng.standard_normal((63, 1)))  # session-specific channel gains
    stim = np.zeros(n)
    for i, code in enumerate(codes):
        onset = LEAD_IN + i * SOA_SAMPLES
        eeg[:, onset:onset + 1000] += responses[int(code)]
        stim[onset:onset + PULSE_SAMPLES] = code
    eeg = eeg * VOLTS + 20 * VOLTS * rng.standard_normal((63, 1))
    return np.vstack([eeg, stim[None]]).astype(np.float32)


def _save_raw(path: Path, data: np.ndarray, order: np.ndarray) -> None:
    names = list(THINGS_63)
    payload = {"raw_eeg_data": np.vstack([data[:63][order], data[63:]]),
               "ch_names": [names[i] for i in order] + ["stim"],
               "ch_types": ["eeg"] * 63 + ["stim"], "sfreq": RAW_SFREQ}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, payload, allow_pickle=True)


def generate_raw(out: str | Path, preset: str = "tiny", seed: int = 0, n_subjects: int | None = None) -> Path:
    """Write a synthetic raw THINGS-EEG download to ``out`` (which must not exist or be empty); returns ``out``."""
    spec = get_raw_preset(preset)
    out, count = output_folder_and_count(out, spec.n_subjects, n_subjects)
    world = World(spec.world_preset(), seed)
    n_train = len(world.train_u)
    with atomic_directory(out) as tmp:
        with atomic_path(tmp / "image_metadata.npy") as meta_tmp, open(meta_tmp, "wb") as fh:
            np.save(fh, world.image_metadata(), allow_pickle=True)
        save_feature_set(tmp / "features.npz", world.feature_set(seed))
        for subject in range(1, count + 1):
            model, train_evoked, test_evoked = _subject_responses(spec, world, seed, subject)
            rng = np.random.default_rng([seed, 10, subject])
            order = rng.permutation(63)  # the file's channel order; NICE order is restored by preprocessing
            mixing = rng.standard_normal(model.lead.shape)
            train_resp = dict(zip(range(1, n_train + 1), _upsample(train_evoked)))
            test_resp = dict(zip(range(1, len(test_evoked) + 1), _upsample(test_evoked)))
            for session in range(spec.n_sessions):
                folder = tmp / "raw_data" / f"sub-{subject:02d}" / f"ses-{session + 1:02d}"
                folder.mkdir(parents=True)
                shown = [c for c in range(1, n_train + 1) if session in train_sessions_of(c - 1, spec)]
                for part, conditions, reps, resp in (("training", shown, spec.train_reps_per_session, train_resp),
                                                     ("test", list(test_resp), spec.test_reps_per_session, test_resp)):
                    codes = np.repeat(np.asarray(conditions), reps)
                    catch = rng.choice(list(resp), spec.catch_per_session)
                    codes = rng.permutation(np.concatenate([codes, np.full(len(catch), CATCH_CODE)]))
                    responses = dict(resp)
                    responses[CATCH_CODE] = 1.5 * resp[int(catch[0])]
                    data = _session_recording(codes, responses, model, mixing, rng)
                    _save_raw(folder / f"raw_eeg_{part}.npy", data, order)
        info = {"generator": "bench.data.synthetic_raw", "raw": True, "seed": seed, "n_subjects": count,
                "preset": asdict(spec)}
        atomic_write_text(tmp / "synthetic.json", json.dumps(info, indent=1))
    return out
