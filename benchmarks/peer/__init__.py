"""The peer: the tutorial's optim example as a lightning-hydra-template user writes it (benchmarks/peer/train.py)."""
