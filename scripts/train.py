"""Train the tutorial's net as configured by conf/ and record it in MLflow.

    python scripts/train.py model=dynamic optim=sgd_momentum
    python scripts/train.py -m optim=sgd,adam model=sequential,dynamic

The same as the console script ``backproplab-train`` (backproplab/cli.py), which an installed package has.
"""

from backproplab.cli import train

if __name__ == "__main__":
    train()
