"""edgecloak: on-device face cloaking with TIP-IM adversarial identity masks."""

__version__ = "0.1.0"
