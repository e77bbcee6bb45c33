"""What every EEG encoder shares: the braindecode-style signal arguments, their checks, and ``get_config``.

An encoder is ``class E(EEGEncoderMixin, nn.Module)`` whose ``__init__`` starts with
``n_chans, n_times, n_outputs, sfreq=None, chs_info=None`` followed by its hyper-parameters, and calls
``super().__init__(n_chans=..., n_times=..., n_outputs=..., sfreq=..., chs_info=...)`` first. Its
``forward(x, subject=None)`` maps ``(batch, n_chans, n_times)`` to ``(batch, n_outputs)``.
"""
from __future__ import annotations

import functools
import inspect
import json
from typing import Any, Sequence

import torch
from torch import nn


class ShortWindowError(ValueError):
    """The time axis is shorter than an encoder's kernels and pools need."""


def require_min_times(n_times: int, min_times: int, what: str) -> None:
    """Fail at construction, not deep inside a conv, when the window is too short (braindecode's wording)."""
    if n_times < min_times:
        raise ShortWindowError(
            f"Model may require longer chunks of signal in the input than {n_times} samples: {what} needs at "
            f"least {min_times} samples on its time axis."
        )


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
    return float(value)


def _channel_names(chs_info: Sequence[Any]) -> list[str]:
    names = []
    for i, ch in enumerate(chs_info):
        if isinstance(ch, str):
            names.append(ch)
        elif isinstance(ch, dict) and isinstance(ch.get("ch_name"), str):
            names.append(ch["ch_name"])
        else:
            raise ValueError(f"chs_info[{i}] must be a channel name or a dict with 'ch_name' (as mne's info['chs']), "
                             f"got {ch!r}")
    return names


class EEGEncoderMixin:
    """Signal arguments, input checks and a JSON round-trip of the constructor arguments.

    ``n_chans`` may be left ``None`` when ``chs_info`` is given; when both are given they must agree.
    ``chs_info`` entries are channel names or mne-style dicts; ``get_config`` keeps only the names so the
    config stays JSON-able.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args: Any, **kw: Any) -> None:
            # The outermost class's arguments are the ones that rebuild the object, so a subclass calling
            # super().__init__ must not overwrite them.
            if "_init_config" not in self.__dict__:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                config = dict(bound.arguments)
                config.pop(next(iter(signature.parameters)))
                self.__dict__["_init_config"] = config
            init(self, *args, **kw)

        cls.__init__ = recording_init

    def __init__(self, *, n_chans: int | None, n_times: int, n_outputs: int, sfreq: float | None = None,
                 chs_info: Sequence[Any] | None = None) -> None:
        super().__init__()
        if chs_info is not None:
            names = _channel_names(chs_info)
            if n_chans is None:
                n_chans = len(names)
            elif n_chans != len(names):
                raise ValueError(f"n_chans={n_chans} but chs_info lists {len(names)} channels")
        elif n_chans is None:
            raise ValueError("give n_chans or chs_info")
        if sfreq is not None and (isinstance(sfreq, bool) or not isinstance(sfreq, (int, float)) or sfreq <= 0):
            raise ValueError(f"sfreq must be a positive number, got {sfreq!r}")
        self.n_chans = positive_int("n_chans", n_chans)
        self.n_times = positive_int("n_times", n_times)
        self.n_outputs = positive_int("n_outputs", n_outputs)
        self.sfreq = sfreq
        self.chs_info = chs_info

    def check_input(self, x: torch.Tensor, subject: torch.Tensor | None = None) -> None:
        """Name the expected shape instead of letting a matmul fail with two numbers."""
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.n_chans, self.n_times):
            raise ValueError(f"{type(self).__name__} expects x of shape (batch, {self.n_chans}, {self.n_times}), "
                             f"got {tuple(x.shape)}")
        if subject is not None and (subject.ndim != 1 or subject.shape[0] != x.shape[0]):
            raise ValueError(f"subject must have shape ({x.shape[0]},), got {tuple(subject.shape)}")

    def get_config(self) -> dict[str, Any]:
        config = dict(self.__dict__["_init_config"])
        if config.get("chs_info") is not None:
            config["chs_info"] = _channel_names(config["chs_info"])
        try:
            json.dumps(config)
        except TypeError as exc:  # fail here, naming the encoder, rather than later while writing a run record
            raise TypeError(f"{type(self).__name__} config is not JSON-able: {exc}") from exc
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        return cls(**config)
