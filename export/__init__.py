"""The workstation (torch) side of edgecloak: model zoo, conversion, bundle export, and the torch
TIP-IM oracle (``reference/oracle.py``) that the tests and ``edgecloak bench`` compare the runtime with.

Imported as ``edgecloak.export``. May import ``edgecloak.runtime``; never the reverse.
"""
