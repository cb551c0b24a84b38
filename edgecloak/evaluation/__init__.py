"""Measured protection (``edgecloak eval``): the protocol, the metrics, the compared methods, the
recognizers that score them, upload transforms, the run itself and its report.

``metrics``, ``protocol`` and ``transforms`` are numpy + OpenCV only; ``evaluators`` and the
``reference``/bundle methods load torch recognizers when a run starts, and ``report`` imports
matplotlib only when it draws.
"""
