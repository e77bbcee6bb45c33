"""``bench preprocess``: raw sessions → one subject's published view, one subject and one session at a time.

Per session: epoch the training and test recordings (MNE), estimate the noise covariance from the training
partition (``train``, NICE's choice) or from both (``train+test``, the official variant: the mean of the two
partitions' covariances), whiten both partitions with its inverse square root, and park the result in a float32
scratch file. Then per partition: merge the sessions block by block into the output file. Each subject folder is
built in a temporary directory renamed into place at the end, so an error leaves no half-written subject. After each
subject, ``preprocessing.json`` in the output root (:mod:`bench.data.sidecar`) is written to list it with the options.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.data.atomic import atomic_directory
from bench.data.diskarray import DiskArray
from bench.data.errors import DataFormatError, DataRootError
from bench.data.formats import ImageList, read_image_metadata
from bench.data.preprocess.epochs import SessionEpochs, epoch_session
from bench.data.preprocess.merge import SessionPart, merged_blocks, plan_merge, rep_permutation
from bench.data.preprocess.mvnn import inverse_sqrt, mean_noise_covariance, whiten_
from bench.data.preprocess.output import FILE_NAMES, write_partition
from bench.data.preprocess.profiles import (MVNN_COVARIANCES, MVNN_DIMS, REFERENCE_SEED, Profile, get_profile)
from bench.data.preprocess.raw import raw_dir, raw_subjects, read_raw_session, session_files
from bench.data.sidecar import check_can_add, record_subjects
from bench.io import atomic_path

PARTITION_WORDS = {"train": "training", "test": "test"}


@dataclass
class Options:
    profile: Profile
    mvnn_covariance: str = "train"
    mvnn_dim: str | None = None  # None: the profile's
    shuffle_seed: int | None = REFERENCE_SEED  # None: keep session order
    selection_seed: int = REFERENCE_SEED
    n_sessions: int = 4
    reps: dict[str, int] = field(default_factory=lambda: {"train": 2, "test": 20})

    def __post_init__(self) -> None:
        if self.mvnn_covariance not in MVNN_COVARIANCES:
            raise DataFormatError(f"--mvnn-covariance must be one of {', '.join(MVNN_COVARIANCES)}, got "
                                  f"{self.mvnn_covariance!r}")
        self.mvnn_dim = self.mvnn_dim or self.profile.mvnn_dim
        if self.mvnn_dim not in MVNN_DIMS:
            raise DataFormatError(f"--mvnn-dim must be one of {', '.join(MVNN_DIMS)}, got {self.mvnn_dim!r}")


def find_image_metadata(raw_root: Path, explicit: Path | None) -> Path | None:
    if explicit is not None:
        if not Path(explicit).is_file():
            raise DataRootError(f"--image-metadata {explicit} does not exist")
        return Path(explicit)
    base = raw_dir(raw_root).parent
    for folder in (Path(raw_root), base, base / "image_set"):
        if (folder / "image_metadata.npy").is_file():
            return folder / "image_metadata.npy"
    return None


def whitened_session(files: dict[str, Path], opts: Options, scratch: Path, tag: str,
                     step) -> dict[str, tuple[SessionPart, SessionEpochs]]:
    """Epoch, whiten and park one session's two partitions; returns their scratch parts."""
    epochs = {}
    for part in ("train", "test"):
        step(f"{tag} {PARTITION_WORDS[part]}: epoching")
        session = read_raw_session(files[part], opts.profile.sfreq)
        epochs[part] = epoch_session(session, opts.profile, opts.reps[part], opts.selection_seed)
        del session
    if not np.allclose(epochs["train"].times, epochs["test"].times):
        raise DataFormatError(f"{files['train'].parent}: training and test epochs have different time axes")
    first = 0 if opts.profile.keep_from is None else int(np.searchsorted(epochs["train"].times,
                                                                         opts.profile.keep_from - 1e-9))
    kept = {part: e.data[..., first:] for part, e in epochs.items()}
    step(f"{tag}: MVNN ({opts.mvnn_dim}, covariance from {opts.mvnn_covariance})")
    sources = ["train"] if opts.mvnn_covariance == "train" else ["test", "train"]
    cov = np.mean([mean_noise_covariance(kept[p], opts.mvnn_dim) for p in sources], axis=0)
    w = inverse_sqrt(cov, f"noise covariance of {files['train'].parent}")
    out = {}
    for part, data in kept.items():
        data = np.ascontiguousarray(data)
        whiten_(data, w)
        path = scratch / f"{tag}-{part}.f32"
        data.tofile(path)
        out[part] = (SessionPart(DiskArray(path, 0, np.float32, data.shape), epochs[part].conditions), epochs[part])
        del data
    return out


def preprocess_subject(raw_root: Path, subject: int, out_dir: Path, opts: Options, images: ImageList | None,
                       progress: bool = True) -> list[Path]:
    from tqdm import tqdm

    sessions = session_files(raw_root, subject, opts.n_sessions)
    # Steps: per session, epoching of each partition and the MVNN; then writing each partition.
    bar = tqdm(total=3 * len(sessions) + 2, desc=f"sub-{subject:02d}", unit="step", disable=not progress)

    def step(label: str) -> None:
        bar.set_postfix_str(label, refresh=False)
        bar.update(1)

    written = []
    try:
        with atomic_directory(out_dir) as tmp:
            scratch = tmp / ".scratch"
            scratch.mkdir()
            try:
                parts: dict[str, list[SessionPart]] = {"train": [], "test": []}
                times = ch_names = None
                for s, files in enumerate(sessions, start=1):
                    for part, (sp, ep) in whitened_session(files, opts, scratch, f"ses-{s:02d}", step).items():
                        parts[part].append(sp)
                        if times is not None and not np.allclose(times, ep.times):
                            raise DataFormatError(f"{files[part]}: its epochs have a different time axis than "
                                                  f"session 1 (a different sampling rate?)")
                        times, ch_names = ep.times, ep.ch_names
                for part in ("train", "test"):
                    step(f"writing {FILE_NAMES[part]}")
                    what = f"sub-{subject:02d} {PARTITION_WORDS[part]}"
                    plan = plan_merge(parts[part], what)
                    _check_against_images(plan.n_conditions, part, images, what)
                    order = rep_permutation(plan.reps, opts.shuffle_seed)
                    write_partition(tmp / FILE_NAMES[part], opts.profile.file_format, plan.shape(parts[part][0]),
                                    merged_blocks(parts[part], plan, order), ch_names, times)
                    written.append(out_dir / FILE_NAMES[part])
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    finally:
        bar.close()
    return written


def _check_against_images(n: int, part: str, images: ImageList | None, what: str) -> None:
    if images is None:
        return
    expected = len(images.train_images if part == "train" else images.test_images)
    if n != expected:
        raise DataFormatError(f"{what}: {n} image conditions, but {images.source} lists {expected} {part} images; "
                              f"the EEG rows could not be paired with images")


def preprocess(raw_root: str | Path, out: str | Path, profile: str = "nice250", subjects: list[int] | None = None,
               *, image_metadata: str | Path | None = None, cache: bool = True, progress: bool = True,
               **options) -> list[Path]:
    """Rebuild ``profile``'s published view of ``subjects`` (default: all) under ``out``; returns the files written.

    ``options`` are :class:`Options` fields (``mvnn_covariance``, ``mvnn_dim``, ``shuffle_seed``, ``selection_seed``,
    ``n_sessions``, ``reps``).
    """
    raw_root, out = Path(raw_root).expanduser(), Path(out).expanduser()
    opts = Options(get_profile(profile), **options)
    subjects = sorted(subjects) if subjects else raw_subjects(raw_root)
    if not subjects:
        raise DataRootError(f"{raw_dir(raw_root)}: no sub-XX folders")
    eeg_root = out / opts.profile.eeg_folder
    for subject in subjects:  # everything checkable is checked before anything is written
        session_files(raw_root, subject, opts.n_sessions)
        if (eeg_root / f"sub-{subject:02d}").exists():
            raise DataRootError(f"{eeg_root / f'sub-{subject:02d}'} already exists; remove it or choose another --out")
    settings = sidecar_settings(opts, raw_root)
    check_can_add(out, settings)
    meta_path = find_image_metadata(raw_root, Path(image_metadata) if image_metadata else None)
    images = read_image_metadata(meta_path) if meta_path else None
    written, tool = [], tool_state()
    for subject in subjects:
        written += preprocess_subject(raw_root, subject, eeg_root / f"sub-{subject:02d}", opts, images, progress)
        record_subjects(out, settings, [subject], tool)  # after each subject: the sidecar lists what is there
    if meta_path is not None:
        _copy_beside(meta_path, out / "image_metadata.npy")
        if (meta_path.parent / "features.npz").is_file():  # the synthetic download ships its features
            _copy_beside(meta_path.parent / "features.npz", out / "features.npz")
    if cache:
        from bench.data.cache import cached_eeg

        for path in written:
            cached_eeg(path)
    return written


def sidecar_settings(opts: Options, raw_root: Path) -> dict:
    """What the preprocessing sidecar records about how the files were made (see bench.data.sidecar.SETTINGS)."""
    return {"profile": opts.profile.name, "mvnn_covariance": opts.mvnn_covariance, "mvnn_dim": opts.mvnn_dim,
            "shuffle_seed": opts.shuffle_seed, "selection_seed": opts.selection_seed, "n_sessions": opts.n_sessions,
            "reps": dict(opts.reps), "raw_root": str(raw_root.resolve())}


def tool_state() -> dict:
    """The version and git state of the code doing the preprocessing."""
    from bench import __version__
    from bench.provenance import git_state

    return {"version": __version__, **git_state()}


def _copy_beside(src: Path, dst: Path) -> None:
    if dst.exists() and dst.read_bytes() == src.read_bytes():
        return
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
