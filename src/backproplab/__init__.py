"""backproplab: the nine examples of "Learning PyTorch with Examples" as one tracked pipeline.

``backproplab.train("experiment=optim", ...)`` trains and records a run from Python (backproplab/api.py); it is
imported on first use, so that ``import backproplab`` stays cheap for the modules that need none of it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("backproplab")
except PackageNotFoundError:  # src/ on the path without an install (the GPU check's node)
    __version__ = "0+unknown"

__all__ = ["ConfigError", "TrainResult", "__version__", "train"]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainResult", "ConfigError"):
        from backproplab import api

        return getattr(api, name)
    raise AttributeError(f"module 'backproplab' has no attribute {name!r}")
