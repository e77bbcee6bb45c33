"""`bench preprocess` on synthetic raw sessions: layout, channel order, times, label order, baseline, whitening,
train-only covariance, bad input, that the result is a data root `bench data check` and `bench train` accept, and its
preprocessing.json sidecar (read by the dataset, carried by run records, flagged by the leaderboard)."""
import json
import pickle
import re
import shutil

import numpy as np
import pytest

from bench.cli import main
from bench.data.channels import OCCIPITAL_17, THINGS_63
from bench.data.errors import DataFormatError
from bench.data.preprocess import get_profile, preprocess
from bench.data.preprocess.epochs import epoch_session
from bench.data.preprocess.mvnn import inverse_sqrt, shrunk_covariances
from bench.data.preprocess.raw import RawDataError, read_raw_session, session_files
from bench.data.synthetic_raw import RAW_PRESETS, evoked_templates

SPEC = RAW_PRESETS["tiny"]
N_TRAIN = SPEC.n_train_concepts * SPEC.images_per_train_concept


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw") / "things"
    main(["synth", "--raw", "--out", str(root), "--preset", "tiny", "--seed", "0", "--subjects", "1"])
    return root


@pytest.fixture(scope="module")
def nice_root(raw_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("nice") / "root"
    preprocess(raw_root, out, "nice250", [1], cache=False, progress=False)
    return out


@pytest.fixture(scope="module")
def official_root(raw_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("official") / "root"
    main(["preprocess", "--raw-root", str(raw_root), "--out", str(out), "--profile", "official100"])
    return out


def load_nice(root, part):
    with open(root / "Preprocessed_data_250Hz" / "sub-01" / f"preprocessed_eeg_{part}.npy", "rb") as fh:
        return pickle.load(fh)  # what NICE/ATM do


def load_official(root, part):
    return np.load(root / "preprocessed_data" / "sub-01" / f"preprocessed_eeg_{part}.npy", allow_pickle=True).item()


def test_synthetic_raw_files_have_the_osf_raw_format(raw_root):
    raw = np.load(raw_root / "raw_data" / "sub-01" / "ses-02" / "raw_eeg_training.npy", allow_pickle=True).item()
    assert sorted(raw) == ["ch_names", "ch_types", "raw_eeg_data", "sfreq"]
    assert raw["sfreq"] == 1000 and raw["raw_eeg_data"].shape[0] == 64 and raw["ch_names"][-1] == "stim"
    assert sorted(raw["ch_names"][:63]) == sorted(THINGS_63) and raw["ch_names"][:63] != list(THINGS_63)
    codes = raw["raw_eeg_data"][-1]
    onsets = codes[np.flatnonzero(np.diff(np.r_[0, codes]) > 0)]
    assert (onsets == 99999).sum() == SPEC.catch_per_session
    assert len(np.unique(onsets[onsets != 99999])) == N_TRAIN * SPEC.sessions_per_train_image // SPEC.n_sessions


def test_nice250_shapes_channels_and_times(nice_root):
    train, test = load_nice(nice_root, "training"), load_nice(nice_root, "test")
    assert train["preprocessed_eeg_data"].shape == (N_TRAIN, 4, 63, 250)
    assert test["preprocessed_eeg_data"].shape == (SPEC.n_test_concepts, 80, 63, 250)
    assert train["preprocessed_eeg_data"].dtype == np.float32
    for d in (train, test):
        assert d["ch_names"] == list(THINGS_63)
        assert len(d["times"]) == 300 and np.allclose(np.diff(d["times"]), 0.004)
        assert d["times"][0] == pytest.approx(-0.2) and d["times"][50] == pytest.approx(0.0, abs=1e-9)
    assert (nice_root / "image_metadata.npy").is_file() and (nice_root / "features.npz").is_file()


def test_official100_shapes_channels_and_times(official_root):
    train, test = load_official(official_root, "training"), load_official(official_root, "test")
    assert train["preprocessed_eeg_data"].shape == (N_TRAIN, 4, 17, 100)
    assert test["preprocessed_eeg_data"].shape == (SPEC.n_test_concepts, 80, 17, 100)
    assert train["ch_names"] == list(OCCIPITAL_17)
    assert len(train["times"]) == 100 and train["times"][0] == pytest.approx(-0.2)
    assert train["times"][-1] == pytest.approx(0.79)


def _matching(data: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """Row i's repetition average: index of the best-correlated noise-free response."""
    avg = data.mean(axis=1).reshape(len(data), -1)
    tpl = templates.reshape(len(templates), -1)
    avg = avg - avg.mean(1, keepdims=True)
    tpl = tpl - tpl.mean(1, keepdims=True)
    corr = (avg / np.linalg.norm(avg, axis=1, keepdims=True)) @ (tpl / np.linalg.norm(tpl, axis=1, keepdims=True)).T
    return corr.argmax(axis=1)


def test_each_conditions_signal_is_at_its_row_in_nice_channel_order(nice_root):
    train_tpl, test_tpl = evoked_templates("tiny", 0, 1)
    for part, tpl in (("training", train_tpl), ("test", test_tpl)):
        data = load_nice(nice_root, part)["preprocessed_eeg_data"]
        rows = np.arange(len(data))
        assert np.array_equal(_matching(data, tpl[..., 50:]), rows), part
        scrambled = data[:, :, np.random.default_rng(0).permutation(63)]
        assert np.mean(_matching(scrambled, tpl[..., 50:]) == rows) < 0.8  # the channel order matters to the check


def test_baseline_is_zero_mean_before_and_after_whitening(raw_root, official_root):
    profile = get_profile("nice250")
    files = session_files(raw_root, 1, 4)[0]
    epochs = epoch_session(read_raw_session(files["test"], profile.sfreq), profile, 20, 20200220)
    assert len(epochs.times) == 300 and np.array_equal(epochs.conditions, np.arange(1, SPEC.n_test_concepts + 1))
    base, post = epochs.data[..., epochs.times < 0], epochs.data[..., (epochs.times > 0.08) & (epochs.times < 0.5)]
    scale = epochs.data.std()
    assert np.abs(base.mean(-1)).max() < 0.06 * scale  # resampling after the baseline leaves a small residual
    assert np.abs(post.mean(-1)).max() > 0.5 * scale  # the evoked response is not zero-mean
    # At 100 Hz the anti-aliasing filter smears post-stimulus activity into single trials' baselines (both references
    # correct the baseline before resampling), so the whitened output is zero-mean there on average over trials.
    whitened = load_official(official_root, "test")
    times, data = whitened["times"], whitened["preprocessed_eeg_data"]
    erp = data.mean(axis=(0, 1))
    baseline = np.abs(erp[:, times < 0].mean(-1)).max()
    assert baseline < 0.05 * data.std()
    assert np.abs(erp[:, (times > 0.08) & (times < 0.5)]).max() > 5 * baseline


def _mean_trial_covariance(data: np.ndarray) -> np.ndarray:
    x = data.reshape(-1, data.shape[2], data.shape[3]).astype(np.float64)
    x = x - x.mean(axis=2, keepdims=True)
    return np.einsum("nct,ndt->cd", x, x) / (x.shape[0] * x.shape[2])


def test_training_partition_is_whitened(raw_root, nice_root):
    def distance_from_identity(cov):
        return np.linalg.norm(cov / np.mean(np.diag(cov)) - np.eye(len(cov))) / np.sqrt(len(cov))

    whitened = _mean_trial_covariance(load_nice(nice_root, "training")["preprocessed_eeg_data"])
    assert np.mean(np.diag(whitened)) == pytest.approx(1.0, abs=0.15)  # unit variance, not volts
    assert distance_from_identity(whitened) < 0.2
    profile = get_profile("nice250")
    epochs = epoch_session(read_raw_session(session_files(raw_root, 1, 4)[0]["train"], 250), profile, 2, 20200220)
    assert distance_from_identity(_mean_trial_covariance(epochs.data[..., 50:])) > 0.5  # it was not white before


def _perturb_test_files(root):
    for path in (root / "raw_data" / "sub-01").glob("ses-*/raw_eeg_test.npy"):
        raw = np.load(path, allow_pickle=True).item()
        raw["raw_eeg_data"][:10] *= 4.0  # a different noise covariance in the test recordings only
        np.save(path, raw, allow_pickle=True)


def test_whitening_uses_the_training_partition_only(raw_root, nice_root, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(raw_root, changed)
    _perturb_test_files(changed)
    kw = dict(cache=False, progress=False)
    preprocess(changed, tmp_path / "a", "nice250", [1], **kw)
    assert np.array_equal(load_nice(tmp_path / "a", "training")["preprocessed_eeg_data"],
                          load_nice(nice_root, "training")["preprocessed_eeg_data"])
    assert not np.allclose(load_nice(tmp_path / "a", "test")["preprocessed_eeg_data"],
                           load_nice(nice_root, "test")["preprocessed_eeg_data"])
    # the official variant averages in the test covariance: now the training data depend on the test recordings
    preprocess(raw_root, tmp_path / "b", "nice250", [1], mvnn_covariance="train+test", **kw)
    preprocess(changed, tmp_path / "c", "nice250", [1], mvnn_covariance="train+test", **kw)
    b, c = (load_nice(tmp_path / x, "training")["preprocessed_eeg_data"] for x in "bc")
    assert not np.allclose(b, c, atol=1e-3)


def test_shrunk_covariance_matches_the_ledoit_wolf_formula():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 40, 6)) @ rng.standard_normal((6, 6)) * [1, 2, 3, 1, 1, 5]
    got = shrunk_covariances(x)
    for b in range(3):
        # Ledoit & Wolf (2004) on standardised data, written the textbook way (sum over samples).
        sd = x[b].std(axis=0)
        z = (x[b] - x[b].mean(0)) / sd
        n, p = z.shape
        s = z.T @ z / n
        mu = np.trace(s) / p
        d2 = np.sum((s - mu * np.eye(p)) ** 2)
        b2 = min(sum(np.sum((np.outer(r, r) - s) ** 2) for r in z) / n**2, d2)
        shrunk = (b2 / d2) * mu * np.eye(p) + (1 - b2 / d2) * s
        assert 0 < b2 / d2 < 1
        np.testing.assert_allclose(got[b], sd[:, None] * shrunk * sd[None, :], rtol=1e-10)
    w = inverse_sqrt(got[0])
    np.testing.assert_allclose(w @ got[0] @ w, np.eye(6), atol=1e-10)


def test_output_passes_data_check_and_trains(nice_root, official_root, tmp_path, capsys):
    for root in (nice_root, official_root):
        main(["data", "check", "--data-root", str(root)])
        assert "ok: 1 subject(s)" in capsys.readouterr().out
    main(["train", "--method", "ridge", "--data-root", str(nice_root), "--subject", "1", "--quiet",
          "--results-dir", str(tmp_path), "--set", "protocol.val_concepts=2"])
    (record,) = (tmp_path / "runs").glob("*.json")
    rec = json.loads(record.read_text())
    assert rec["status"] == "completed" and rec["metrics"]["top1"] > rec["metrics"]["chance_top1"]


def _rewrite(path, **changes):
    raw = np.load(path, allow_pickle=True).item()
    for key, value in changes.items():
        value(raw) if callable(value) else raw.__setitem__(key, value)
    np.save(path, raw, allow_pickle=True)


def _drop_stim(raw):
    raw["raw_eeg_data"] = raw["raw_eeg_data"][:-1]
    raw["ch_names"], raw["ch_types"] = raw["ch_names"][:-1], raw["ch_types"][:-1]


@pytest.mark.parametrize("breakage, message", [
    ("no-stim", "no 'stim' channel"),
    ("sfreq", "sampled at least at 250 Hz"),
    ("session", "missing session(s) ses-03"),
])
def test_bad_raw_input_is_refused_without_partial_output(raw_root, tmp_path, capsys, breakage, message):
    broken = tmp_path / "raw"
    shutil.copytree(raw_root, broken)
    ses = broken / "raw_data" / "sub-01"
    if breakage == "no-stim":
        _rewrite(ses / "ses-04" / "raw_eeg_test.npy", drop=_drop_stim)
    elif breakage == "sfreq":
        _rewrite(ses / "ses-02" / "raw_eeg_training.npy", sfreq=200)
    else:
        shutil.rmtree(ses / "ses-03")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["preprocess", "--raw-root", str(broken), "--out", str(out), "--no-cache"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and message in err and "Traceback" not in err
    assert not [p for p in out.rglob("*") if p.is_file()] if out.exists() else True  # nothing half-written
    if breakage != "session":
        with pytest.raises(RawDataError):
            preprocess(broken, tmp_path / "api", "nice250", [1], cache=False, progress=False)


def test_sidecar_says_how_the_data_were_made_and_runs_carry_it(raw_root, nice_root, official_root, tmp_path):
    from bench import __version__
    from bench.data.dataset import ThingsEEG
    from bench.leaderboard import build_leaderboard, render
    from bench.records import RunStore

    side = json.loads((nice_root / "preprocessing.json").read_text())
    assert side["profile"] == "nice250" and side["mvnn_covariance"] == "train" and side["subjects"] == [1]
    assert side["version"] == __version__ and side["raw_root"] == str(raw_root.resolve()) and side["created_at"]
    assert json.loads((official_root / "preprocessing.json").read_text())["profile"] == "official100"
    # the dataset finds it from the data root and from the EEG folder (NICE's layout) alike
    ds = ThingsEEG.open(nice_root / "Preprocessed_data_250Hz")
    assert ds.preprocessing == side
    ds.preprocessing["mvnn_covariance"] = "x"  # read-only: a copy
    assert ThingsEEG.open(nice_root).preprocessing["mvnn_covariance"] == "train"
    leaky = tmp_path / "leaky"
    preprocess(raw_root, leaky, "nice250", [1], mvnn_covariance="train+test", cache=False, progress=False)
    results = tmp_path / "results"
    for root in (nice_root, leaky):
        main(["train", "--method", "ridge", "--data-root", str(root), "--subject", "1", "--quiet",
              "--results-dir", str(results), "--set", "protocol.val_concepts=2"])
    records = {r.provenance["preprocessing"]["mvnn_covariance"]: r for r in RunStore(results).records()}
    assert set(records) == {"train", "train+test"}
    assert records["train+test"].provenance["preprocessing"]["raw_root"] == str(raw_root.resolve())
    board = build_leaderboard(records.values())  # two entries: the data roots differ in config (data.root)
    main_md = render(board, "md", "main")
    rows = [line for line in main_md.splitlines() if line.startswith("| ridge@")]
    assert [("MVNN train+test" in row) for row in rows].count(True) == 1 and len(rows) == 2
    assert "fitted on the training and test recordings" in main_md  # the footnote says what the note means
    assert "complete; MVNN train+test" in render(board, "html")


@pytest.mark.parametrize("content, message", [
    ("{not json", "unreadable preprocessing sidecar"),
    ("[1, 2]", "expected a JSON object"),
    ('{"schema": "thingsbench-preprocessing/1", "profile": "nice250", "subjects": [1]}',
     "mvnn_covariance must be one of train, train+test; found no such key"),
    ('{"schema": "thingsbench-preprocessing/1", "profile": "nice250", "mvnn_covariance": "test", "subjects": [1]}',
     "found 'test'"),
])
def test_malformed_sidecar_is_a_data_format_error_naming_the_file(nice_root, tmp_path, content, message):
    from bench.data.dataset import ThingsEEG

    root = tmp_path / "root"
    shutil.copytree(nice_root, root)
    (root / "preprocessing.json").write_text(content)
    with pytest.raises(DataFormatError, match=re.escape(message)) as exc:
        ThingsEEG.open(root)
    assert str(root / "preprocessing.json") in str(exc.value)


def test_sidecar_grows_with_subjects_made_alike_and_refuses_others(raw_root, tmp_path):
    two = tmp_path / "raw2"
    main(["synth", "--raw", "--out", str(two), "--preset", "tiny", "--seed", "0", "--subjects", "2"])
    out = tmp_path / "out"
    kw = dict(cache=False, progress=False)
    preprocess(two, out, "nice250", [1], **kw)
    with pytest.raises(DataFormatError, match="mvnn_covariance: 'train' there, 'train\\+test' now"):
        preprocess(two, out, "nice250", [2], mvnn_covariance="train+test", **kw)
    assert not (out / "Preprocessed_data_250Hz" / "sub-02").exists()  # refused before anything was written
    preprocess(two, out, "nice250", [2], **kw)
    side = json.loads((out / "preprocessing.json").read_text())
    assert side["subjects"] == [1, 2] and side["updated_at"]
