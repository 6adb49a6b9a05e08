"""Where lorafleet keeps state: `LORAFLEET_HOME` (registry, artifacts) and `LORAFLEET_CACHE` (converted models)."""

import os
from pathlib import Path


def home_dir() -> Path:
    """The registry and artifact store root; `LORAFLEET_HOME` or `~/.lorafleet`."""
    return Path(os.environ.get("LORAFLEET_HOME") or Path.home() / ".lorafleet")


def cache_dir() -> Path:
    """Converted base models and cached fingerprints; `LORAFLEET_CACHE` or `~/.cache/lorafleet`."""
    return Path(os.environ.get("LORAFLEET_CACHE") or Path.home() / ".cache" / "lorafleet")
