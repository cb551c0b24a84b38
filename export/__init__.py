"""The workstation (torch) side of edgecloak: model zoo, conversion, the TIP-IM reference.

Imported as ``edgecloak.export``. May import ``edgecloak.runtime``; never the reverse.
"""
