"""The Lightning trainer: any model + loss + optimizer from the config, in one LightningModule.

Full batch, as in the tutorial: one training step is one pass over all N samples. The data live in the
module as buffers (moved to the device once); the "dataloader" only counts the steps.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from omegaconf import DictConfig

from backproplab import signals
from backproplab.models import export_weights, load_weights
from backproplab.problem import Problem
from backproplab.steps import CKPT_META, OnStep, Recorder, Result

# Lightning's start-up banners (GPU/TPU available, tips) add nothing to a run's log.
for pkg in ("lightning.pytorch", "pytorch_lightning"):  # the second name shows up in joblib workers
    for name in ("utilities.rank_zero", "trainer.connectors.checkpoint_connector"):
        logging.getLogger(f"{pkg}.{name}").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
# With manual optimization a step's checkpoint holds the weights after that step's update: exactly the
# state a resume from step K needs, so Lightning's warning about it does not apply here.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
# The "dataloader" only counts steps (the full batch lives in the module), so a checkpoint saved mid-"epoch" resumes
# exactly (tests/test_reliability.py holds it bit for bit): Lightning's warning about resuming such a loader is moot.
warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended")
# Where Slurm is installed, Lightning advises every run that is not started with srun to be so. A run on a login
# node is a local run here; a run sent to Slurm goes through hydra/launcher=slurm, which starts it with srun.
warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")


class TutorialModule(L.LightningModule):
    """One shared step for every model, the tutorial's optim loop: y_pred = net(x); loss = criterion(y_pred, y);
    zero_grad; backward; step.

    Manual optimization: the step is written out as in the tutorial, and it skips the closure machinery of
    Lightning's automatic optimization, which costs about as much per step as this whole tiny step.
    """

    def __init__(
        self, net: torch.nn.Module, criterion: torch.nn.Module, optimizer: Any, problem: Problem, meta: dict
    ):
        super().__init__()
        self.meta = meta  # saved in checkpoints, so that a resume with another model or optimizer is refused
        self.automatic_optimization = False
        self.net, self.criterion, self.optimizer = net, criterion, optimizer
        self.register_buffer("x", torch.from_numpy(problem.x), persistent=False)
        self.register_buffer("y", torch.from_numpy(problem.y), persistent=False)
        self.repeats = problem.repeats

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning names the hook it is in on the module around every hook call (~26 times a step), and
        # nn.Module.__setattr__'s parameter/buffer/module checks made that ~10% of the tutorial's step. The name
        # is a plain attribute, which needs none of those checks.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # lesson: step
    def forward(self, x: torch.Tensor, step: int | None = None) -> torch.Tensor:
        if self.repeats is not None:  # a dynamic model: this step's count from the seeded schedule
            return self.net(x, repeats=None if step is None else int(self.repeats[step]))
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        optimizer = self.optimizers()
        y_pred = self(self.x, self.global_step)
        loss = self.criterion(y_pred, self.y)
        optimizer.zero_grad()
        self.manual_backward(loss)  # precision plugins and DDP's gradient sync hook in here
        optimizer.step()
        return loss.detach()
    # lesson: end

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer(self.parameters())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CKPT_META] = self.meta


# Lightning asks inspect, every step, whether training_step takes batch_idx; inspect honours a function's
# __signature__, so the answer is worked out once (2-3% of the tutorial's Lightning loop here, alternating rounds).
TutorialModule.training_step.__signature__ = inspect.signature(TutorialModule.training_step)  # type: ignore[attr-defined]


class NoProfiler(PassThroughProfiler):
    """Lightning's default profiler without its cost: PassThroughProfiler profiles nothing, but still builds a
    generator context manager around each of the ~26 hook calls of a step (4% of the tutorial's loop here)."""

    _none = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:  # type: ignore[override]
        return self._none


HISTORY = "backproplab/loss_history"  # (step, loss) rows, sent back from spawned DDP workers


class StepReporter(L.Callback):
    """Hands each step's loss to the run's recorder, the same way every other trainer does;
    keeps the first step's gradients for the equivalence check.

    Under ``strategy=ddp_spawn`` training happens in worker processes that get a pickled copy of this
    callback without the recorder; rank 0 collects the curve and Lightning ships it back to the main
    process in ``trainer.callback_metrics``, where ``replay`` hands it to the recorder.
    """

    def __init__(self, on_step: OnStep, divergence_factor: float | None = None, requeue_to: str | None = None):
        self.on_step: OnStep | None = on_step
        self.requeue_to = requeue_to  # where to save the checkpoint that a requeued Slurm job resumes from
        self.grads0: dict[str, np.ndarray] = {}
        self.exception: BaseException | None = None
        self.worker = Recorder(divergence_factor)  # a spawned worker's curve and checks, until sent back
        self.last = float("nan")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "on_step": None}  # the recorder (and its MLflow client) stays in main

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule, optimizer: Any) -> None:
        if trainer.global_step == 0:
            self.grads0 = export_weights(module.net, attr="grad")

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, *_: Any) -> None:
        step, loss = trainer.global_step - 1, outputs["loss"].item()
        self.last = loss
        if self.on_step is not None:
            self.on_step(step, loss)
        elif trainer.is_global_zero:
            self.worker.on_step(step, loss)
        if self.requeue_to and signals.warned():  # Slurm's time-limit warning: save this step, then stop
            trainer.save_checkpoint(self.requeue_to)
            raise signals.Requeue(step)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.on_step is None and trainer.is_global_zero:
            rows = list(zip(self.worker.steps, self.worker.losses, strict=True))
            trainer.callback_metrics[HISTORY] = torch.tensor(rows, dtype=torch.float64)

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        self.exception = exception

    def replay(self, trainer: L.Trainer, on_step: OnStep) -> None:
        for step, loss in trainer.callback_metrics.get(HISTORY, torch.empty(0, 2)).tolist():
            on_step(int(step), loss)


class LossBar(TQDMProgressBar):
    """Lightning's progress bar showing the reporter's loss: no per-step self.log (which costs more than
    the tutorial's whole step), and a redraw every few steps rather than every step."""

    def __init__(self, reporter: StepReporter, refresh_rate: int):
        super().__init__(refresh_rate=refresh_rate)
        self.reporter = reporter

    def get_metrics(self, trainer: L.Trainer, module: L.LightningModule) -> dict[str, Any]:
        return {**super().get_metrics(trainer, module), "loss": f"{self.reporter.last:.4g}"}

    # training is counted in steps (the whole run is one Lightning "epoch"): the bar says "train", not "Epoch 0"
    @property
    def train_description(self) -> str:
        return "train"

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        bar.reset(total=self.total_train_batches)
        bar.initial = 0


class Steps:
    """The "dataloader": one empty batch per step, since the full batch lives in the module.
    (Not a plain range: DDP's spawn launcher rebuilds sequences it finds in fit's arguments.)"""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n


def cluster_environment(strategy: str) -> list[Any]:
    """Inside a Slurm job (srun), where the ranks come from: Slurm's tasks (``strategy=ddp``: one task per
    device, which hydra/launcher=slurm asks for), or Lightning's own processes (``ddp_spawn``: one task spawns
    them). Lightning's auto-requeue stays off: Slurm's time-limit warning is submitit's signal (USR2), acted on
    at a step's end (``StepReporter``), not Lightning's (USR1)."""
    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    if not SLURMEnvironment.detect():
        return []
    spawns = any(word in strategy for word in ("spawn", "fork", "notebook"))  # ddp_spawn, ddp_fork, ddp_notebook
    return [LightningEnvironment()] if spawns else [SLURMEnvironment(auto_requeue=False)]


def progress_bar(setting: Any) -> bool:
    return sys.stdout.isatty() if str(setting) == "auto" else bool(setting)


def train(problem: Problem, cfg: DictConfig, on_step: OnStep) -> Result:
    torch.manual_seed(cfg.seed)
    dtype = torch.float64 if problem.dtype == np.float64 else torch.float32
    net = load_weights(instantiate(cfg.model.net).to(dtype), problem.weights)
    meta = {"model": cfg.model.name, "optim": cfg.optim.name}
    module = TutorialModule(net, instantiate(cfg.loss.criterion), instantiate(cfg.optim.optimizer), problem, meta)
    t = cfg.trainer
    checkpointing = bool(t.get("checkpoint_dir") and t.get("checkpoint_every"))
    requeue_to = f"{t.checkpoint_dir}/last.ckpt" if checkpointing else None
    reporter = StepReporter(on_step, t.get("divergence_factor"), requeue_to)
    callbacks: list[L.Callback] = [reporter]
    show_bar = progress_bar(t.get("progress_bar", "auto"))
    if show_bar:
        callbacks.append(LossBar(reporter, refresh_rate=max(1, t.max_steps // 100)))
    if checkpointing:
        callbacks.append(
            ModelCheckpoint(
                dirpath=t.checkpoint_dir,
                # one rolling last.ckpt; keep_checkpoints=N also keeps the N-1 latest steps. "step" is one of
                # Lightning's own monitor candidates; no "=" in the name (it would need quoting in ckpt_path=...)
                save_last=True,
                monitor="step",
                mode="max",
                save_top_k=t.get("keep_checkpoints", 1) - 1,
                filename="step_{step:06d}",
                auto_insert_metric_name=False,
                every_n_train_steps=t.checkpoint_every,
                enable_version_counter=False,  # a rolling file: never last-v1.ckpt beside last.ckpt
            )
        )
    trainer = L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        precision=t.precision,
        strategy=t.get("strategy", "auto"),
        num_nodes=t.get("num_nodes", 1),
        plugins=cluster_environment(str(t.get("strategy", "auto"))),
        max_steps=t.max_steps,
        max_epochs=-1,
        logger=False,  # the run's record is written by backproplab.tracking, like every other trainer's
        enable_checkpointing=checkpointing,
        enable_model_summary=False,
        enable_progress_bar=show_bar,
        callbacks=callbacks,
        profiler=NoProfiler(),
    )
    # DDP, or any processes Lightning starts itself (ddp_spawn even on one device): no requeue on Slurm's time-limit
    # warning, which those processes ignore (signals.warning_ignored)
    several = trainer.world_size > 1 or isinstance(trainer.strategy.launcher, _MultiProcessingLauncher)
    if several:
        reporter.requeue_to = None
    start = time.perf_counter()
    try:
        with signals.warning_ignored() if several else contextlib.nullcontext():
            trainer.fit(module, train_dataloaders=Steps(t.max_steps), ckpt_path=cfg.get("ckpt_path"))
    except SystemExit:
        # Lightning turns Ctrl-C into sys.exit(1) after its graceful shutdown; hand the interrupt on so
        # that the run is recorded as KILLED, not FAILED.
        if isinstance(reporter.exception, KeyboardInterrupt):
            raise reporter.exception from None
        raise
    loop_s = time.perf_counter() - start
    if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
        reporter.replay(trainer, on_step)
    if checkpointing:  # collective under DDP: every rank calls it, rank 0 writes
        trainer.save_checkpoint(f"{t.checkpoint_dir}/last.ckpt")
    net = net.cpu().eval()  # as it is logged: a dynamic model served at its deepest path (backproplab.forward)
    with torch.no_grad():  # what its logged model must predict
        dtype = next(net.parameters()).dtype
        outputs = net(torch.from_numpy(problem.x).to(dtype))
        outputs = (outputs.float() if dtype == torch.bfloat16 else outputs).numpy()  # numpy has no bfloat16
    return Result(weights=export_weights(net), loop_s=loop_s, model=net, grads0=reporter.grads0, outputs=outputs)
