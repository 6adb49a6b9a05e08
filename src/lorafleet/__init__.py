"""lorafleet: turn chat data into LoRA / QLoRA adapters and serve a fleet of them on one base model."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lorafleet")
except PackageNotFoundError:  # running from a source tree without an install (the GPU machine)
    __version__ = "0.0.0+src"
