"""ThingsBench: a benchmark harness for zero-shot EEG-to-image decoding on THINGS-EEG."""
__version__ = "0.1.0"
