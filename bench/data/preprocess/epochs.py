"""One raw session → epochs sorted by image condition, with MNE (events, epochs, baseline, resampling, channels).

As in both reference pipelines: events come from the stim channel, catch trials (code 99999) are dropped, epochs are
baseline-corrected over (tmin, 0) s at the recording rate and then resampled, and each condition keeps ``reps``
repetitions chosen the way ``sklearn.utils.shuffle(idx, random_state=seed, n_samples=reps)`` chooses them (so the
selection matches the references when a session holds more repetitions than kept).

Memory: the session is epoched in chunks of events, each resampled before the next is cut, so the 1000 Hz epochs of
a whole session (≈10 GB for a real training session) never exist at once; the output is float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.data.preprocess.profiles import Profile
from bench.data.preprocess.raw import STIM, RawDataError, RawSession

CATCH_CODE = 99999
CHUNK_EVENTS = 256


@dataclass
class SessionEpochs:
    data: np.ndarray  # (conditions, reps, channels, samples) float32, conditions ascending
    conditions: np.ndarray  # the image-condition codes of the rows
    ch_names: list[str]
    times: np.ndarray  # seconds, one per sample of the whole epoch (baseline included)


def reference_selection(n: int, keep: int, seed: int) -> np.ndarray:
    """Positions ``sklearn.utils.shuffle(range(n), random_state=seed, n_samples=keep)`` returns (its
    ``resample(replace=False)``: a fresh RandomState(seed) shuffles ``arange(n)``; the first ``keep`` are kept)."""
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    return order[:keep]


def find_events(session: RawSession, raw) -> np.ndarray:
    import mne

    try:
        events = mne.find_events(raw, stim_channel=STIM, verbose="ERROR")
    except ValueError as exc:  # e.g. one-sample events, which find_events refuses by default
        raise RawDataError(f"{session.path}: cannot read events from the stim channel: {exc}") from exc
    events = events[events[:, 2] != CATCH_CODE]
    if not len(events):
        raise RawDataError(f"{session.path}: the stim channel holds no image-condition events")
    return events


def epoch_session(session: RawSession, profile: Profile, reps: int, seed: int, progress=None) -> SessionEpochs:
    import mne

    missing = [c for c in profile.channels if c not in session.ch_names]
    if missing:
        raise RawDataError(f"{session.path}: channel(s) {', '.join(missing)} are missing; profile {profile.name} "
                           f"needs {len(profile.channels)} channels")
    raw = mne.io.RawArray(session.data, mne.create_info(session.ch_names, session.sfreq, session.ch_types),
                          verbose="ERROR")
    session.data = np.empty((0, 0))  # RawArray holds its own (float64) copy; drop ours
    events = find_events(session, raw)
    raw.pick(list(profile.channels))
    raw.reorder_channels(list(profile.channels))

    conditions, counts = np.unique(events[:, 2], return_counts=True)
    short = conditions[counts < reps]
    if len(short):
        raise RawDataError(f"{session.path}: {len(short)} image condition(s) (e.g. {short[0]}) have fewer than "
                           f"{reps} repetitions; lower the repetitions kept per session (--train-reps/--test-reps)")
    # Destination (condition row, repetition) of each selected event.
    dest = np.full((len(events), 2), -1)
    for row, code in enumerate(conditions):
        positions = np.flatnonzero(events[:, 2] == code)
        dest[positions[reference_selection(len(positions), reps, seed)], :] = np.c_[
            np.full(reps, row), np.arange(reps)]
    chosen = np.flatnonzero(dest[:, 0] >= 0)

    out = times = None
    for start in range(0, len(chosen), CHUNK_EVENTS):
        idx = chosen[start:start + CHUNK_EVENTS]
        epochs = mne.Epochs(raw, events[idx], tmin=profile.tmin, tmax=profile.tmax, baseline=(None, 0),
                            preload=True, event_repeated="drop", verbose="ERROR")
        if len(epochs) != len(idx):
            lost = sorted(set(map(int, events[idx, 0])) - set(map(int, epochs.events[:, 0])))
            raise RawDataError(f"{session.path}: {len(idx) - len(epochs)} epoch(s) fall outside the recording "
                               f"(first at sample {lost[0] if lost else '?'}); cannot cut {profile.tmin:g}…"
                               f"{profile.tmax:g} s around every event")
        if session.sfreq != profile.sfreq:
            epochs.resample(profile.sfreq, verbose="ERROR")
        chunk = epochs.get_data(copy=False)
        if out is None:
            times = epochs.times.copy()
            out = np.empty((len(conditions), reps) + chunk.shape[1:], dtype=np.float32)
        out[dest[idx, 0], dest[idx, 1]] = chunk
        if progress is not None:
            progress(len(idx))
    del raw
    return SessionEpochs(out, conditions, list(profile.channels), times)
