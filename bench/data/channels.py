"""THINGS-EEG channel names, the two presets the literature uses, and channel selection by name.

The 63-channel order is NICE's ``chan_order`` (the order of the 250 Hz files); the 17 occipital/parietal channels are
the official preprocessing's ``^O *|^P *`` selection, which UBP and its descendants hard-code.
"""
from __future__ import annotations

import difflib
from typing import Sequence

from bench.errors import ConfigError

THINGS_63: tuple[str, ...] = tuple("""
Fp1 Fp2 AF7 AF3 AFz AF4 AF8 F7 F5 F3 F1 F2 F4 F6 F8 FT9 FT7 FC5 FC3 FC1 FCz FC2 FC4 FC6 FT8 FT10 T7 C5 C3 C1 Cz C2
C4 C6 T8 TP9 TP7 CP5 CP3 CP1 CPz CP2 CP4 CP6 TP8 TP10 P7 P5 P3 P1 Pz P2 P4 P6 P8 PO7 PO3 POz PO4 PO8 O1 Oz O2
""".split())

OCCIPITAL_17: tuple[str, ...] = tuple("P7 P5 P3 P1 Pz P2 P4 P6 P8 PO7 PO3 POz PO4 PO8 O1 Oz O2".split())

PRESETS: dict[str, tuple[str, ...]] = {"all63": THINGS_63, "occipital17": OCCIPITAL_17}

assert len(THINGS_63) == 63 and len(set(THINGS_63)) == 63 and set(OCCIPITAL_17) <= set(THINGS_63)


def requested_channels(spec: str | Sequence[str]) -> list[str]:
    """The channel names ``spec`` asks for, in output order.

    ``spec`` is a preset (``all63``, ``occipital17``), a comma-separated string (``"O1,Oz,O2"``, handy with ``--set``)
    or a list of names. Names must be THINGS-EEG channel names.
    """
    if isinstance(spec, str):
        if spec in PRESETS:
            return list(PRESETS[spec])
        names = [n.strip() for n in spec.split(",") if n.strip()]
        if len(names) == 1 and names[0] not in THINGS_63:
            close = difflib.get_close_matches(spec, list(PRESETS) + list(THINGS_63), n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"data.channels: unknown channel preset or name {spec!r}.{hint} "
                              f"Presets: {', '.join(PRESETS)}; or give a list of channel names.")
    else:
        names = [str(n) for n in spec]
    if not names:
        raise ConfigError("data.channels: the channel list is empty")
    unknown = [n for n in names if n not in THINGS_63]
    if unknown:
        raise ConfigError(f"data.channels: {', '.join(map(repr, unknown))} are not THINGS-EEG channel names "
                          f"(the 63 are: {' '.join(THINGS_63)})")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"data.channels: channels listed twice: {', '.join(dupes)}")
    return names


def unknown_channel_names(names: Sequence[str]) -> list[str]:
    """Names in a file that are not THINGS-EEG channels (a wrong or foreign montage)."""
    return [n for n in names if n not in THINGS_63]
