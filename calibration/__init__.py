"""Precision and loop-budget presets, decided by measurement (``edgecloak calibrate``; README, "Presets, by measurement")."""
