"""ThingsBench: a benchmark harness for zero-shot EEG-to-image decoding on THINGS-EEG."""
__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy: `import bench` (the CLI's start-up) must not pay for torch; bench.load_run imports it on first use
    if name == "load_run":
        from bench.saved_model import load_run

        return load_run
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
