"""Amaranth RTL of the accelerator and the configuration object every part reads."""
