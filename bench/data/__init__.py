"""The data layer: where THINGS-EEG files enter the harness (readers, cache, dataset, features, synthetic data)."""
