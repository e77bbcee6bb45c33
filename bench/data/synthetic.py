"""Synthetic THINGS-EEG: a dataset with known structure, written in the NICE/ATM 250 Hz on-disk format.

``bench synth --out DIR --preset tiny|default|full`` writes::

    DIR/Preprocessed_data_250Hz/sub-XX/preprocessed_eeg_{training,test}.npy   pickle.dump'ed dicts, as NICE/ATM
    DIR/image_metadata.npy      the published np.save'd dict of per-image concept folders and file names
    DIR/features.npz            image and text features (and NICE-style test concept centres), our format
    DIR/synthetic.json          preset, seed, generator version

so the loaders that read real data are the ones that run. Everything is a deterministic function of the seed (each
block of trials has its own random stream, so the result does not depend on memory or chunking).

Generative model
----------------
Concepts and images (shared by all subjects):

* ``n_categories`` category centres ``c_k ~ N(0, I_d)`` (d = ``latent_dim``); each concept belongs to one category and
  has latent ``z = 0.6 c_k + 0.8 e``, ``e ~ N(0, I_d)``; test concepts are new concepts from the same categories, so
  decoding them is zero-shot but learnable.
* each image of a concept has latent ``u = z + 0.5 v``, ``v ~ N(0, I_d)`` (within-concept variation).
* image features (D = 1024, like ViT-H-14) = ``normalise(a(u) g + √(1 − 0.73²) P⊥(rest))`` with ``g`` a fixed
  unit *common direction*, ``a(u) = 0.73 (1 + 0.1 s(u))`` (``s`` a standardised random read-out of the hidden layer
  below) and ``P⊥`` removing the components along ``g`` and the text direction ``t``. ``rest`` has three parts, in
  shares of its mean square:

  - 0.60 *structured*: ``W₂ (gelu(W₁ u + b₁) − mean)``, a fixed random two-layer network (d → 512 → D) of the
    image latent; its spectrum decays like that of any smooth map of a 24-d latent with categories. This is the
    part the EEG carries;
  - 0.12 *concept-only*: a random vector per concept, shared by its images (what CLIP sees in a concept beyond the
    latent);
  - 0.28 *image-only*: a random vector per image, scaled per concept by ``exp(0.4 N(0, 1))`` (normalised to mean
    square 1), so some concepts' images look alike and others vary; it is what no latent and no EEG carries.

  Test concept centres (NICE's gallery) average the unit features of 12 further images of the concept.
* text features = ``normalise(0.837 t + 0.547 q)``, one per concept, with ``t`` a unit *text direction* at cosine
  0.245 to ``g`` and ``q = 0.55 n(P⊥(structured(z) + concept-only)) + 0.835 n(P⊥(T(z) − mean))`` (``n``:
  normalise; ``T`` a random tanh network of the concept latent): text follows what a concept's images share, not
  any one image, and sits in a cone of its own.

EEG of subject s (63 channels at their positions in MNE's built-in ``easycap-M1`` montage, the EASYCAP system the
data were recorded with; −0.2…1.0 s at 250 Hz, baseline-corrected, the 250 samples from 0 s kept):

* five ERP components (P1 100 ms occipital, N1 170 ms occipito-temporal, P2 230 ms parieto-occipital, N300 300 ms
  and P3/N400 400 ms centro-parietal), each with 8 sources. A source has a smooth dipolar scalp map (two Gaussian
  lobes of opposite sign on the sphere) and a Gaussian or biphasic waveform. Latencies, lobe positions and gains
  are shared templates plus subject-specific shifts (≈10 ms, ≈0.1 rad, ±25 % amplitude).
* source amplitudes = subject's mean ERP + ``B_s tanh(latent)``: the first three components are driven by the image
  latent ``u`` (image-level), the last two by the concept latent ``z`` (concept-level signal, what text targets
  help with). ``B_s = √0.6 B_shared + √0.4 B_subject``, so subjects share most but not all of the code (leave-one-
  subject-out decoding works, worse than within-subject).
* each trial: signal × (1 + 0.2 N(0,1)) amplitude jitter, plus 1/f^1.5 background from 16 spatially smooth sources,
  an alpha oscillation (subject peak 9–11.5 Hz, random phase and amplitude per trial) over occipito-parietal sites,
  and white sensor noise. The noise is then scaled to unit variance (like MVNN-whitened data) and the informative
  signal to ``snr`` of it, so single trials decode far worse than repetition averages.

The published files are float64; the synthetic ones are float32 (``tiny``, ``full``) or float16 (``default``, to keep
it a few hundred MB). The loaders accept all three.

Feature geometry
----------------
The weights above are calibrated so the features have the geometry of real CLIP (``CLIP_GEOMETRY`` below,
:func:`bench.data.features.feature_geometry`): real CLIP ViT-L/14 image embeddings share a large common direction,
which decides whether a regression that adds back the training mean can retrieve at all (issue 17: version 1 of this
generator had mean pairwise cosine 0.25 and hid that). Image rows are the test images (one per test concept); the real
figures are the 200 THINGS test images' unit ``image_embeds`` and NICE's ``center_clip.npy`` concept centres (norm of
the mean of ≈ 12 unit image features). Principal-component shares depend on the number of images, so their real value
is the mean over random subsets of the preset's size. Measured with seed 0 (``tests/test_synthetic_geometry.py``
checks every preset within the stated tolerance):

===================================  =======================  =========  =========  =========  ===========
statistic                            real CLIP                tiny       default    full       tolerance
===================================  =======================  =========  =========  =========  ===========
image mean pairwise cosine           0.544                    0.522      0.554      0.536      ± 0.05
common direction: |mean unit image|  0.739                    0.731      0.748      0.734      ± 0.05
sd of the projections on it          0.062                    0.065      0.051      0.059      ± 0.02
top-10 PC variance share             0.497 / 0.360 / 0.309 *  0.514      0.380      0.315      ± 0.08
top-1 PC variance share              0.092 / 0.075 / 0.069 *  0.089      0.061      0.049
participation ratio                  26.3 / 44.7 / 58.8 *     25.5       45.2       63.3
concept-centre norm, mean            0.905                    0.898      0.915      0.907      ± 0.03
concept-centre norm, min–max         0.74–0.98                0.71–0.96  0.81–0.96  0.74–0.97  in 0.6–0.99
image–own centre cosine              0.890                    0.877      0.898      0.889      ± 0.03
image–other centres cosine           0.597                    0.584      0.608      0.593      ± 0.05
image → centre top-1                 0.98                     1.00       1.00       1.00       ≥ 0.9
image–text cosine, matching          ≈ 0.30 †                 0.299      0.310      0.304      ± 0.05
image–text cosine, not matching      ≈ 0.15 †                 0.156      0.154      0.151      ± 0.05
text–text mean pairwise cosine       ≈ 0.70 †                 0.728      0.703      0.704      ± 0.08
===================================  =======================  =========  =========  =========  ===========

* at 40 / 100 / 200 images (tiny / default / full test sets); † assumed, see below.

The text figures are not measured here (the real text features were not at hand). They follow CLIP's *modality gap*
(Liang et al., "Mind the Gap", NeurIPS 2022: image and text embeddings occupy two separate narrow cones): a matching
image–text pair has cosine ≈ 0.2–0.35 in CLIP ViT-L/14 and ViT-H-14 (logit ≈ 100 × cosine ≈ 30), far below two
unrelated images (≈ 0.54), and prompts built from one template have mean pairwise cosine ≈ 0.6–0.8. The tests ask for
a matching pair below the image–image mean by at least 0.15 and above the non-matching ones by at least 0.08.

Version 2 kept every random draw of version 1 in order (the feature geometry draws from streams of its own), so the
latents, names and EEG of a seed are byte-identical to version 1's; only ``features.npz`` differs. A ridge read-out
that adds the training-feature mean back to its predictions scores near chance on these features (it did not on
version 1's); see ``baselines/ridge.py``.
"""
from __future__ import annotations

import functools
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from bench.data.atomic import atomic_directory, file_lock
from bench.data.channels import THINGS_63
from bench.data.errors import DataRootError
from bench.data.features import FeatureSet, PartitionFeatures, l2_normalize, save_feature_set
from bench.data.writer import write_nice_pickle
from bench.io import atomic_path, atomic_write_text
from bench.paths import cache_dir

GENERATOR_VERSION = 2
SFREQ = 250.0
EPOCH_TIMES = np.arange(-50, 250) / SFREQ  # −0.2 … 0.996 s: the 300 `times` of the published 250 Hz files
KEEP_FROM = 50  # the data keep the 250 samples from 0 s on


@dataclass(frozen=True)
class Preset:
    name: str
    n_subjects: int
    n_train_concepts: int
    images_per_train_concept: int
    train_reps: int
    n_test_concepts: int
    test_reps: int
    n_categories: int
    dtype: str
    feature_dim: int = 1024
    latent_dim: int = 24
    snr: float = 0.2

    def describe(self) -> str:
        return (f"{self.n_subjects} subjects; train {self.n_train_concepts} concepts × {self.images_per_train_concept} "
                f"images × {self.train_reps} reps; test {self.n_test_concepts} × {self.test_reps} reps; 63×250 "
                f"@ 250 Hz, {self.dtype}")


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", 3, 40, 3, 2, 40, 16, 6, "float16", snr=0.2),
    "default": Preset("default", 10, 200, 2, 2, 100, 6, 20, "float16", snr=0.12),
    "full": Preset("full", 10, 1654, 10, 4, 200, 80, 27, "float32", snr=0.1),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        from bench.errors import ConfigError

        raise ConfigError(f"unknown synthetic preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


# --- concepts, images and features ----------------------------------------------------------------------------------
#: What the feature geometry is calibrated to: :func:`bench.data.features.feature_geometry` of real CLIP ViT-L/14
#: ``image_embeds`` of the 200 THINGS test images and NICE's concept centres (NICE-EEG's ``clip_feature_maps_test.npy``
#: and ``center_clip.npy``; summary statistics only). Principal-component shares depend on how many images there are:
#: ``top_k_variance`` maps a gallery size to the mean share over random subsets of that size of the 200. The text
#: figures are assumptions about CLIP's modality gap (module docstring), not measurements.
CLIP_GEOMETRY = {
    "mean_pairwise_cosine": 0.544, "common_direction_norm": 0.739, "common_direction_sd": 0.062,
    "top_k_variance": {40: {1: 0.092, 5: 0.314, 10: 0.497, 20: 0.746}, 100: {1: 0.075, 5: 0.237, 10: 0.360, 20: 0.529},
                       200: {1: 0.069, 5: 0.208, 10: 0.309, 20: 0.445}},
    "participation_ratio": {40: 26.3, 100: 44.7, 200: 58.8},
    "centre_norm_min": 0.738, "centre_norm_mean": 0.905, "centre_norm_max": 0.978,
    "image_centre_matched": 0.890, "image_centre_unmatched": 0.597, "image_centre_top1": 0.98,
    "image_text_matched": 0.30, "image_text_unmatched": 0.15, "text_mean_pairwise_cosine": 0.70,
}

# The feature geometry (module docstring, "Feature geometry"): weights and shares of the parts of a unit image feature.
COMMON_WEIGHT = 0.73        # the shared image direction: |mean unit image| ≈ 0.74, mean pairwise cosine ≈ 0.54
COMMON_SPREAD = 0.10        # relative spread of that weight across images (real: projections 0.74 ± 0.06)
STRUCTURED_SHARE = 0.60     # of the rest: a function of the image latent u (what the EEG carries)
CONCEPT_ONLY_SHARE = 0.12   #   a random vector per concept (what its images share beyond the latent)
IMAGE_ONLY_SHARE = 0.28     #   a random vector per image, scaled per concept (what no latent carries)
IMAGE_ONLY_SPREAD = 0.4     # log-sd of that per-concept scale: some concepts look alike, others vary (centre norms)
TEXT_COMMON_WEIGHT = 0.837  # the shared text direction: text–text mean cosine ≈ 0.70
TEXT_IMAGE_COMMON = 0.245   # cosine of the text and image directions (modality gap: unmatched image–text ≈ 0.15)
TEXT_FOLLOWS_IMAGE = 0.55   # share (as a correlation) of a text's concept part that is its images' concept part
CENTROID_IMAGES = 12        # images averaged into a NICE-style test concept centre
FEATURE_BLOCK = 2048        # image rows per random stream: results do not depend on memory


class World:
    """Everything shared by the subjects: concepts, image latents, feature maps."""

    def __init__(self, preset: Preset, seed: int):
        rng = np.random.default_rng([seed, 0])
        d = preset.latent_dim
        n_concepts = preset.n_train_concepts + preset.n_test_concepts
        centres = rng.standard_normal((preset.n_categories, d))
        self.category = rng.integers(preset.n_categories, size=n_concepts)
        z = 0.6 * centres[self.category] + 0.8 * rng.standard_normal((n_concepts, d))
        self.train_z, self.test_z = z[: preset.n_train_concepts], z[preset.n_train_concepts:]
        ipc = preset.images_per_train_concept
        self.train_u = np.repeat(self.train_z, ipc, axis=0) + 0.5 * rng.standard_normal((len(self.train_z) * ipc, d))
        self.test_u = self.test_z + 0.5 * rng.standard_normal(self.test_z.shape)
        image_map = _RandomNet(rng, d, 512, preset.feature_dim, _gelu)
        text_map = _RandomNet(rng, d, 512, preset.feature_dim, np.tanh)
        centroid_u = self.test_z[:, None] + 0.5 * rng.standard_normal((len(self.test_z), CENTROID_IMAGES, d))
        names = _concept_names(rng, n_concepts)
        self.train_names, self.test_names = names[: preset.n_train_concepts], names[preset.n_train_concepts:]
        self.preset, self.seed = preset, seed
        # Version 1's draws above are kept in order, so latents, names and EEG are those of version 1; everything the
        # feature geometry adds comes from streams of its own.
        self.maps = _FeatureMaps(np.random.default_rng([seed, 5]), preset, image_map, text_map, n_concepts)
        self.train_concept = np.repeat(np.arange(preset.n_train_concepts), ipc)
        self.test_concept = preset.n_train_concepts + np.arange(preset.n_test_concepts)
        centroid_images = self.image_features(centroid_u.reshape(-1, d),
                                              np.repeat(self.test_concept, CENTROID_IMAGES), stream=2)
        self.test_centroid = centroid_images.reshape(len(self.test_z), CENTROID_IMAGES, -1).mean(1)

    def image_features(self, u: np.ndarray, concept: np.ndarray, stream: int) -> np.ndarray:
        """Unit features of images with latents ``u`` of concepts ``concept``; ``stream`` names their random stream."""
        blocks = [self.maps.image(u[i:i + FEATURE_BLOCK], concept[i:i + FEATURE_BLOCK],
                                  np.random.default_rng([self.seed, 6, stream, i // FEATURE_BLOCK]))
                  for i in range(0, len(u), FEATURE_BLOCK)]
        return np.concatenate(blocks) if blocks else np.zeros((0, self.preset.feature_dim), np.float32)

    def partition_features(self, partition: str) -> PartitionFeatures:
        """One partition's image and text features (and, for the test partition, the concept centres)."""
        if partition == "train":
            return PartitionFeatures(image=self.image_features(self.train_u, self.train_concept, stream=0),
                                     text=self.maps.text(self.train_z, np.arange(self.preset.n_train_concepts)))
        return PartitionFeatures(image=self.image_features(self.test_u, self.test_concept, stream=1),
                                 text=self.maps.text(self.test_z, self.test_concept),
                                 centroid=self.test_centroid.astype(np.float32))

    def feature_set(self, seed: int) -> FeatureSet:
        meta = {"model": "synthetic", "weights": f"synthetic-seed{seed}", "layer": "output",
                "transform": "none", "prompt_template": "synthetic text map of the concept latent",
                "preset": self.preset.name, "seed": seed, "generator_version": GENERATOR_VERSION}
        return FeatureSet(train=self.partition_features("train"), test=self.partition_features("test"), meta=meta)

    def image_metadata(self) -> dict:
        ipc = self.preset.images_per_train_concept
        train_folders = [f"{i + 1:05d}_{n}" for i, n in enumerate(self.train_names)]
        test_folders = [f"{i + 1:05d}_{n}" for i, n in enumerate(self.test_names)]
        n_train = len(train_folders)
        return {
            "train_img_concepts": [f for f in train_folders for _ in range(ipc)],
            "train_img_concepts_THINGS": [f for f in train_folders for _ in range(ipc)],
            "train_img_files": [f"{n}_{k + 1:02d}s.jpg" for n in self.train_names for k in range(ipc)],
            "test_img_concepts": test_folders,
            "test_img_concepts_THINGS": [f"{n_train + i + 1:05d}_{n}" for i, n in enumerate(self.test_names)],
            "test_img_files": [f"{n}_01s.jpg" for n in self.test_names],
        }


class _FeatureMaps:
    """Latents → unit image and text features with CLIP's geometry (module docstring, "Feature geometry")."""

    def __init__(self, rng: np.random.Generator, preset: Preset, image_map: _RandomNet, text_map: _RandomNet,
                 n_concepts: int):
        dim = preset.feature_dim
        self.image_map, self.text_map = image_map, text_map
        self.axes = np.linalg.qr(rng.standard_normal((dim, 2)))[0].T  # the image and (with it) the text direction
        self.common = self.axes[0]
        self.text_common = TEXT_IMAGE_COMMON * self.axes[0] + np.sqrt(1 - TEXT_IMAGE_COMMON ** 2) * self.axes[1]
        probe = rng.standard_normal((1024, preset.latent_dim))  # distributed as concept latents z; u = z + 0.5 v
        hidden = self._hidden(np.sqrt(1.25) * probe)
        self.hidden_mean = hidden.mean(0)
        hidden -= self.hidden_mean
        self.readout = image_map.w2 / np.sqrt(np.mean(np.sum((hidden @ image_map.w2) ** 2, axis=1)))  # unit mean square
        common_readout = rng.standard_normal(len(self.hidden_mean))
        self.common_readout = common_readout / np.std(hidden @ common_readout)
        self.text_mean = text_map.act(probe @ text_map.w1 + text_map.b1).mean(0) @ text_map.w2
        self.concept_only = self._off_axes(rng.standard_normal((n_concepts, dim)) / np.sqrt(dim))
        spread = np.exp(IMAGE_ONLY_SPREAD * rng.standard_normal(n_concepts))
        self.image_only_scale = spread / np.sqrt(np.mean(spread ** 2))

    def _hidden(self, latent: np.ndarray) -> np.ndarray:
        return self.image_map.act(latent @ self.image_map.w1 + self.image_map.b1)

    def _off_axes(self, x: np.ndarray) -> np.ndarray:
        return x - (x @ self.axes.T) @ self.axes

    def image(self, u: np.ndarray, concept: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        hidden = self._hidden(u) - self.hidden_mean
        image_only = rng.standard_normal((len(u), self.common.size)) / np.sqrt(self.common.size)
        rest = (np.sqrt(STRUCTURED_SHARE) * hidden @ self.readout
                + np.sqrt(CONCEPT_ONLY_SHARE) * self.concept_only[concept]
                + np.sqrt(IMAGE_ONLY_SHARE) * self.image_only_scale[concept, None] * image_only)
        weight = COMMON_WEIGHT * (1 + COMMON_SPREAD * (hidden @ self.common_readout))
        return l2_normalize(weight[:, None] * self.common + np.sqrt(1 - COMMON_WEIGHT ** 2) * self._off_axes(rest))

    def text(self, z: np.ndarray, concept: np.ndarray) -> np.ndarray:
        shared = (np.sqrt(STRUCTURED_SHARE) * (self._hidden(z) - self.hidden_mean) @ self.readout
                  + np.sqrt(CONCEPT_ONLY_SHARE) * self.concept_only[concept])  # what the concept's images share
        own = self.text_map(z) - self.text_mean
        part = (TEXT_FOLLOWS_IMAGE * l2_normalize(self._off_axes(shared))
                + np.sqrt(1 - TEXT_FOLLOWS_IMAGE ** 2) * l2_normalize(self._off_axes(own)))
        return l2_normalize(TEXT_COMMON_WEIGHT * self.text_common + np.sqrt(1 - TEXT_COMMON_WEIGHT ** 2) * part)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))


class _RandomNet:
    """x → W2 act(W1 x + b1): a fixed random non-linear map."""

    def __init__(self, rng: np.random.Generator, d_in: int, hidden: int, d_out: int, act):
        self.w1 = rng.standard_normal((d_in, hidden)) / np.sqrt(d_in)
        self.b1 = 0.3 * rng.standard_normal(hidden)
        self.w2 = rng.standard_normal((hidden, d_out)) / np.sqrt(hidden)
        self.act = act

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.act(x @ self.w1 + self.b1) @ self.w2


def _concept_names(rng: np.random.Generator, n: int) -> list[str]:
    onsets = "b d f g k l m n p r s t v z br dr fl gr pl sk st tr".split()
    vowels = "a e i o u ai ea oo".split()
    codas = ["", "", "", "n", "r", "l", "s", "m"]
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        words = []
        for _ in range(2 if rng.random() < 0.2 else 1):  # some names have two words, like aircraft_carrier
            words.append("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                                 for _ in range(rng.integers(2, 4))))
        name = "_".join(words)
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


# --- EEG ------------------------------------------------------------------------------------------------------------
#                name     latency s  width s  centre channels            driven by
COMPONENTS = (("P1", 0.100, 0.020, ("O1", "Oz", "O2"), "image"),
              ("N1", 0.170, 0.030, ("PO7", "PO8", "P7", "P8"), "image"),
              ("P2", 0.230, 0.035, ("POz", "PO3", "PO4"), "image"),
              ("N300", 0.300, 0.045, ("CPz", "Pz", "CP1", "CP2"), "concept"),
              ("P3", 0.400, 0.060, ("Pz", "CPz", "Cz", "P1", "P2"), "concept"))
SOURCES_PER_COMPONENT = 8
N_BACKGROUND_SOURCES = 16


@functools.lru_cache(maxsize=1)
def channel_directions() -> np.ndarray:
    """Unit vectors from the head centre to the 63 electrodes of MNE's easycap-M1 montage."""
    import mne

    positions = mne.channels.make_standard_montage("easycap-M1").get_positions()["ch_pos"]
    xyz = np.array([positions[name] for name in THINGS_63])
    return xyz / np.linalg.norm(xyz, axis=1, keepdims=True)


def _blob(directions: np.ndarray, centre: np.ndarray, width: float) -> np.ndarray:
    angle = np.arccos(np.clip(directions @ (centre / np.linalg.norm(centre)), -1.0, 1.0))
    return np.exp(-0.5 * (angle / width) ** 2)


def _jitter_direction(rng: np.random.Generator, direction: np.ndarray, sd: float) -> np.ndarray:
    moved = direction + sd * rng.standard_normal(3)
    return moved / np.linalg.norm(moved)


class SubjectModel:
    """One subject's forward model: latents → single-trial EEG (see the module docstring)."""

    def __init__(self, preset: Preset, seed: int, subject: int, directions: np.ndarray):
        shared = np.random.default_rng([seed, 1])
        own = np.random.default_rng([seed, 2, subject])
        d, n_ch = preset.latent_dim, len(THINGS_63)
        times = EPOCH_TIMES
        index = {name: i for i, name in enumerate(THINGS_63)}
        global_shift = 0.006 * own.standard_normal()
        maps, waves, drives, mean_erp, mixing = [], [], [], [], []
        for name, latency, width, centres, drive in COMPONENTS:
            latency += global_shift + 0.010 * own.standard_normal()
            gain = np.exp(0.25 * own.standard_normal())
            for m in range(SOURCES_PER_COMPONENT):
                centre = directions[index[centres[m % len(centres)]]]
                pos = _jitter_direction(own, _jitter_direction(shared, centre, 0.25), 0.08)
                neg = _jitter_direction(own, _jitter_direction(shared, -centre + 0.5 * shared.standard_normal(3), 0.4),
                                        0.08)
                scalp = _blob(directions, pos, 0.35) - 0.6 * _blob(directions, neg, 0.45)
                maps.append(shared.choice([-1.0, 1.0]) * scalp / np.sqrt(np.mean(scalp**2)))
                t0 = latency + 0.012 * shared.standard_normal()
                w = width * np.exp(0.2 * shared.standard_normal())
                bump = np.exp(-0.5 * ((times - t0) / w) ** 2)
                wave = bump if m % 2 == 0 else -(times - t0) / w * bump * 1.6  # even: monophasic, odd: biphasic
                waves.append(gain * wave)
                drives.append(drive == "concept")
                mean_erp.append(1.2 * shared.standard_normal() + 0.4 * own.standard_normal())
                mixing.append(np.sqrt(0.6) * shared.standard_normal(d) + np.sqrt(0.4) * own.standard_normal(d))
        self.basis = np.einsum("qc,qt->qct", np.array(maps), np.array(waves)).reshape(len(maps), -1)
        self.concept_driven = np.array(drives)
        self.mean_erp = np.array(mean_erp)
        self.mixing = np.array(mixing) / np.sqrt(d)

        # Background: 1/f sources with broad scalp maps, an occipito-parietal alpha rhythm, and sensor noise.
        bg_dirs = own.standard_normal((N_BACKGROUND_SOURCES, 3)) + [0.0, 0.0, 1.0]  # mostly above the ears
        lead = np.stack([_blob(directions, c, 0.6) for c in bg_dirs], axis=1)
        self.lead = lead / np.sqrt(np.mean(np.sum(lead**2, axis=1)))  # unit mean channel variance
        alpha = _blob(directions, directions[index["POz"]] + 0.3 * directions[index["Oz"]], 0.5)
        self.alpha_map = alpha / np.sqrt(np.mean(alpha**2))
        self.alpha_freq = 9.0 + 2.5 * own.random()
        freqs = np.fft.rfftfreq(len(times), 1 / SFREQ)
        pink = np.where(freqs > 0, 1.0 / np.maximum(freqs, 1e-9) ** 0.75, 0.0)  # power ∝ 1/f^1.5
        # Variance of irfft of (a + ib)·pink with a, b ~ N(0, 1): 4 Σ pink² over inner bins + pink²(Nyquist), / N².
        n = len(times)
        variance = (4 * np.sum(pink[1:-1] ** 2) + pink[-1] ** 2) / n**2
        self.pink = (pink / np.sqrt(variance)).astype(np.float32)
        self.alpha_var, self.sensor_var = 0.5, 0.25
        # Each channel's noise variance, made 1 by a per-channel scale applied to the whole trial, as the diagonal of
        # the published data's noise normalisation would (Rayleigh(σ) amplitude × sine has variance σ²).
        channel_var = np.sum(self.lead**2, axis=1) + self.alpha_var * self.alpha_map**2 + self.sensor_var
        self.channel_scale = (1.0 / np.sqrt(channel_var)).astype(np.float32)
        self.basis = (self.basis.reshape(len(maps), n_ch, -1) * self.channel_scale[None, :, None]).reshape(len(maps), -1)
        # Scale the informative part so its RMS is `snr` × the (unit) noise RMS, averaged over post-stimulus samples.
        probe = np.random.default_rng([seed, 4]).standard_normal((256, d))
        informative = (np.tanh(probe) @ self.mixing.T) @ self.basis
        informative = informative.reshape(256, n_ch, -1)[:, :, KEEP_FROM:]
        self.signal_gain = preset.snr / np.sqrt(np.mean(np.var(informative, axis=0)))
        self.signal_gain *= np.exp(0.2 * own.standard_normal())  # subjects differ in how well they decode
        self.n_ch, self.n_t = n_ch, len(times)

    def trials(self, u: np.ndarray, z: np.ndarray, reps: int, rng: np.random.Generator,
               dtype: str | np.dtype = np.float32) -> np.ndarray:
        """(images, reps, 63, 250) single trials in ``dtype`` for images with latents ``u`` of concepts ``z``."""
        n = len(u)
        signal = self.evoked(u, z)
        jitter = np.clip(1.0 + 0.2 * rng.standard_normal((n, reps)), 0.2, None).astype(np.float32)
        x = self._noise(n * reps, rng).reshape(n, reps, self.n_ch, self.n_t)
        for r in range(reps):  # in place: a (n, reps, 63, 300) temporary per term would double the memory
            x[:, r] += signal * jitter[:, r, None, None]
        baseline = x[..., :KEEP_FROM].mean(axis=-1, keepdims=True)  # (−0.2, 0) s, as the real pipelines do
        out = np.empty((n, reps, self.n_ch, self.n_t - KEEP_FROM), dtype=dtype)
        np.subtract(x[..., KEEP_FROM:], baseline, out=out, casting="same_kind")
        return out

    def evoked(self, u: np.ndarray, z: np.ndarray) -> np.ndarray:
        """(images, 63, 300) noise-free responses over ``EPOCH_TIMES`` (−0.2…0.996 s) to images ``u`` of concepts ``z``."""
        drive = np.where(self.concept_driven[None, :], np.tanh(z) @ self.mixing.T, np.tanh(u) @ self.mixing.T)
        amplitude = (self.mean_erp[None, :] + drive) * self.signal_gain
        return (amplitude @ self.basis).reshape(len(u), self.n_ch, self.n_t).astype(np.float32)

    def _noise(self, n: int, rng: np.random.Generator) -> np.ndarray:
        noise = rng.standard_normal((n, self.n_ch, self.n_t), dtype=np.float32)
        noise *= np.float32(np.sqrt(self.sensor_var))
        spectrum = rng.standard_normal((n, N_BACKGROUND_SOURCES, len(self.pink), 2), dtype=np.float32)
        spectrum = (spectrum[..., 0] + 1j * spectrum[..., 1]) * self.pink
        sources = np.fft.irfft(spectrum, n=self.n_t, axis=-1).astype(np.float32)
        noise += np.matmul(self.lead.astype(np.float32), sources)
        freq = self.alpha_freq + 0.3 * rng.standard_normal((n, 1))
        phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
        amp = rng.rayleigh(np.sqrt(self.alpha_var), size=(n, 1))
        rhythm = (amp * np.sin(2 * np.pi * freq * EPOCH_TIMES[None, :] + phase)).astype(np.float32)
        noise += self.alpha_map.astype(np.float32)[None, :, None] * rhythm[:, None, :]
        noise *= self.channel_scale[None, :, None]
        return noise


def _blocks(model: SubjectModel, u: np.ndarray, z: np.ndarray, reps: int, key: list[int],
            dtype: str) -> Iterator[np.ndarray]:
    step = max(1, 1024 // reps)  # a function of the preset only, so results do not depend on memory
    for i, start in enumerate(range(0, len(u), step)):
        rng = np.random.default_rng(key + [i])
        yield model.trials(u[start:start + step], z[start:start + step], reps, rng, dtype)


# --- writing --------------------------------------------------------------------------------------------------------
def output_folder_and_count(out: str | Path, preset_subjects: int, n_subjects: int | None) -> tuple[Path, int]:
    """Check a generator's ``--out`` (new or empty) and ``--subjects`` (1..99, default the preset's)."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataRootError(f"{out} already exists and is not an empty folder; choose a new --out")
    count = preset_subjects if n_subjects is None else int(n_subjects)
    if not 1 <= count <= 99:
        raise DataRootError(f"--subjects must be between 1 and 99, got {count}")
    return out, count


def generate(out: str | Path, preset: str = "default", seed: int = 0, n_subjects: int | None = None) -> Path:
    """Write a synthetic THINGS-EEG data root to ``out`` (which must not exist or be empty); returns ``out``."""
    spec = get_preset(preset)
    out, count = output_folder_and_count(out, spec.n_subjects, n_subjects)
    world = World(spec, seed)
    directions = channel_directions()
    with atomic_directory(out) as tmp:
        with atomic_path(tmp / "image_metadata.npy") as meta_tmp, open(meta_tmp, "wb") as fh:
            np.save(fh, world.image_metadata(), allow_pickle=True)  # a path would get ".npy" appended
        save_feature_set(tmp / "features.npz", world.feature_set(seed))
        ipc = spec.images_per_train_concept
        train_z = np.repeat(world.train_z, ipc, axis=0)
        for subject in range(1, count + 1):
            model = SubjectModel(spec, seed, subject, directions)
            folder = tmp / "Preprocessed_data_250Hz" / f"sub-{subject:02d}"
            folder.mkdir(parents=True)
            for part, u, z, reps, name in (
                    ("train", world.train_u, train_z, spec.train_reps, "preprocessed_eeg_training.npy"),
                    ("test", world.test_u, world.test_z, spec.test_reps, "preprocessed_eeg_test.npy")):
                key = [seed, 3, subject, 0 if part == "train" else 1]
                shape = (len(u), reps, len(THINGS_63), len(EPOCH_TIMES) - KEEP_FROM)
                write_nice_pickle(folder / name, shape, spec.dtype, _blocks(model, u, z, reps, key, spec.dtype),
                                  THINGS_63, EPOCH_TIMES)
        info = {"generator": "bench.data.synthetic", "version": GENERATOR_VERSION, "seed": seed,
                "n_subjects": count, "preset": asdict(spec)}
        atomic_write_text(tmp / "synthetic.json", json.dumps(info, indent=1))
    return out


def synthetic_root(preset: str, seed: int = 0) -> Path:
    """The cache folder of a preset/seed; it names the generator version, so no older dataset is ever reused."""
    return cache_dir() / "synthetic" / f"{preset}-seed{seed}-v{GENERATOR_VERSION}"


def ensure_synthetic(preset: str = "default", seed: int = 0) -> Path:
    """The cached synthetic dataset of ``preset``/``seed``, generated on first use (once, even across processes)."""
    get_preset(preset)
    root = synthetic_root(preset, seed)
    if (root / "synthetic.json").is_file():
        return root
    with file_lock(cache_dir() / "locks" / f"synthetic-{root.name}.lock"):
        if not (root / "synthetic.json").is_file():
            if root.exists():
                shutil.rmtree(root)  # not a finished dataset (no synthetic.json); this cache folder is ours
            generate(root, preset, seed)
    return root
