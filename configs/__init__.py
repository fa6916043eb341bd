"""Experiment configs: one `get_config(arg)` per paper experiment, sharing `configs.base`."""
