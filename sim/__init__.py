"""Cycle-exact, bit-exact Python simulator of the accelerator's programs."""
