"""Train the tutorial's net as configured by conf/ and record it in MLflow.

    python scripts/train.py model=dynamic optim=sgd_momentum
    python scripts/train.py -m optim=sgd,adam model=sequential,dynamic
"""

import gc

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from backproplab.run import main as run

    return run(cfg)


if __name__ == "__main__":
    try:
        main()
    finally:
        # A process holding torch, TF, Lightning and MLflow spends ~2 s in the interpreter's final garbage
        # collection passes; nothing needs collecting at exit (atexit handlers still run).
        gc.freeze()
