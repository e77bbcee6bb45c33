"""Reference methods (NICE, ATM, EEGProject, ridge, ...): one method per module, each registered by name."""
