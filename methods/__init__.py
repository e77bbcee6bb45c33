"""New methods (MCDB): one method per module, each registered by name."""
