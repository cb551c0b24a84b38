"""Precision and loop-budget presets, decided by measurement (see the calibration issue)."""
