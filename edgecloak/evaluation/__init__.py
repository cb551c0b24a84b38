"""Measured protection (``edgecloak eval``): the protocol, the metrics, the compared methods, the
recognizers that score them, upload transforms, the run itself and its report.

Needs the ``eval`` extra: the export extra's torch recognizers score every method, while every
TIP-IM method runs on the runtime, through the SDK's ``Cloaker``. ``metrics`` and ``transforms``
are numpy + OpenCV / Pillow only; ``protocol`` is the standard library only and names the default
recognizers and methods, which the CLI reads to build its flags; ``evaluators`` and ``harness``
import the torch recognizers; ``report`` imports matplotlib only when it draws.
"""
