"""The peer backproplab is measured against: the tutorial's optim example written the way a user of
lightning-hydra-template writes it. A ``@hydra.main`` script, a LightningDataModule and a LightningModule with
automatic optimization, ``self.log("train/loss", ...)`` on every step, Lightning's own MLFlowLogger on a sqlite
store, and a ModelCheckpoint every 100 steps.

    python -m benchmarks.peer.train      # prints "peer loop_s=<seconds>" (fit's time) for the benchmark

It is not part of the product and not of ``bench.py --quick``; ``make bench`` runs it (benchmarks/processes.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, TensorDataset


class RandomDataModule(L.LightningDataModule):
    """The tutorial's data: standard-normal x (n x d_in) and y (n x d_out), one full batch per step."""

    def __init__(self, n: int, d_in: int, d_out: int):
        super().__init__()
        self.n, self.d_in, self.d_out = n, d_in, d_out

    def setup(self, stage: str | None = None) -> None:
        self.data = TensorDataset(torch.randn(self.n, self.d_in), torch.randn(self.n, self.d_out))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.n)


class TutorialLitModule(L.LightningModule):
    """Linear-ReLU-Linear, MSELoss(reduction='sum'), the optimizer from the config."""

    def __init__(self, d_in: int, hidden: int, d_out: int, optimizer: Any):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.net = torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, d_out))
        self.criterion = torch.nn.MSELoss(reduction="sum")

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.criterion(self.net(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.hparams.optimizer(params=self.parameters())


class LoopTimer(L.Callback):
    """fit's training time, for the benchmark (backproplab records the same as time/loop_s)."""

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        print(f"peer loop_s={time.perf_counter() - self.start:.6f}", flush=True)


@hydra.main(version_base="1.3", config_path=str(Path(__file__).parent / "conf"), config_name="config")
def main(cfg: DictConfig) -> None:
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    callbacks = [hydra.utils.instantiate(c) for c in cfg.callbacks.values()] + [LoopTimer()]
    logger = hydra.utils.instantiate(cfg.logger)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(model=model, datamodule=datamodule)


if __name__ == "__main__":
    main()
