"""Rebuilding the published THINGS-EEG views from the raw recordings (``bench preprocess``); see ``pipeline``."""
from bench.data.preprocess.pipeline import Options, preprocess, preprocess_subject
from bench.data.preprocess.profiles import PROFILES, Profile, get_profile

__all__ = ["Options", "PROFILES", "Profile", "get_profile", "preprocess", "preprocess_subject"]
