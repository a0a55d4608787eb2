"""The console scripts: ``backproplab-train`` (= scripts/train.py) and ``backproplab-verify``.

The config tree ships inside the package (``backproplab/conf``: in a checkout, a link to the repository's
conf/), so an installed package finds it from any directory.
"""

from __future__ import annotations

import gc

import hydra
from omegaconf import DictConfig

from backproplab.runtime import conf_dir


# an absolute path: Hydra would take a relative one for a Python package (backproplab.conf), which it is not
@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def _train(cfg: DictConfig) -> float:
    from backproplab.run import main

    return main(cfg)


def train() -> None:
    try:
        _train()
    finally:
        # A process holding torch, TF, Lightning and MLflow spends ~2 s in the interpreter's final garbage
        # collection passes; nothing needs collecting at exit (atexit handlers still run).
        gc.freeze()
