"""Precision and loop-budget presets, decided by measurement (``edgecloak calibrate``; README, "Presets, by measurement").

``budget.py``: the sweep's points, the Pareto front and the rule that picks fast / balanced / max;
``budget_sweep.py``: running the points on the evaluation protocol; ``budget_report.py``: the
Pareto report; ``precision.py``: low-precision gradient graphs and their gate. Calibration measures
through the evaluation harness, so it is the floor above ``edgecloak.evaluation`` (``.importlinter``).

This module imports nothing: ``edgecloak.presets`` finds ``presets.json`` through this package, so
the SDK loads it.
"""
