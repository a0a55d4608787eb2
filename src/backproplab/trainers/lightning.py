"""The Lightning trainer: any model + loss + optimizer from the config, in one LightningModule.

Full batch, as in the tutorial: one training step is one pass over all N samples. The data live in the
module as buffers (moved to the device once); the "dataloader" only counts the steps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import StrategyRegistry

from backproplab import signals
from backproplab.models import export_weights, load_weights
from backproplab.problem import Problem
from backproplab.steps import CKPT_META, OnStep, Recorder, Result, Settings

# Lightning's INFO lines that add nothing to a run's log: the start-up banners (GPU/TPU available, tips), "`Trainer.fit`
# stopped: `max_steps=N` reached." and "Restoring states from the checkpoint ...". Their loggers' levels are Lightning's
# documented switch (docs: "Configure console logging"); ``quiet`` sets them only while Lightning runs. The second
# package name: the same modules under pytorch_lightning, which joblib workers may import.
INFO_LOGGERS = tuple(
    f"{pkg}.{name}"
    for pkg in ("lightning.pytorch", "pytorch_lightning")
    for name in ("utilities.rank_zero", "trainer.connectors.checkpoint_connector")
)
# The warnings that say nothing here, ignored while Lightning runs (``quiet``), each for its reason:
IGNORED = (
    # Where Slurm is installed, Lightning advises every run that is not started with srun to be so (each time it
    # looks for a cluster: as the Trainer is built, as fit starts). A run on a login node is a local run here; a
    # run sent to Slurm goes through hydra/launcher=slurm, which starts it with srun.
    re.escape("The `srun` command is available on your system but is not used"),
    # With manual optimization a step's checkpoint holds the weights after that step's update: exactly the state a
    # resume from that step needs, so ModelCheckpoint's warning about it (at each save) does not apply here.
    re.escape("Using ModelCheckpoint with manual optimization"),
    # torch deprecates building a LeafSpec, which Lightning's data loading still does as fit starts: Lightning's
    # to change.
    re.escape("`isinstance(treespec, LeafSpec)` is deprecated"),
)


# Said only when a run resumes from a checkpoint: ModelCheckpoint notes that the checkpoint's folder is not this
# run's (a resume writes into its own new output folder, so the earlier run's checkpoints are never overwritten)
# and that it will not reload its best score. Checkpoints here are kept by step, not by a score: nothing is lost.
RESUMING = re.escape("The dirpath has changed from")


@contextlib.contextmanager
def quiet(resuming: bool = False) -> Iterator[None]:
    """Lightning's INFO lines off (``INFO_LOGGERS``) and the ``IGNORED`` warnings ignored (and ``RESUMING``'s
    when ``resuming``), for the code inside; both are put back after."""
    loggers = [logging.getLogger(name) for name in INFO_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for message in (*IGNORED, *([RESUMING] if resuming else [])):
            warnings.filterwarnings("ignore", message=message)
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


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


class NoProfiler(PassThroughProfiler):
    """Lightning's default profiler without its cost: PassThroughProfiler profiles nothing, but still builds a
    generator context manager around each of the ~26 hook calls of a step (4% of the tutorial's loop here)."""

    _none = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:  # type: ignore[override]
        return self._none


class Quiet(L.Callback):
    """``quiet`` in each process that Lightning spawns to train (ddp_spawn): a new Python, with the default
    warning filters and log levels, which unpickles the Trainer with this callback before it trains; from then
    until ``teardown`` (or ``on_exception``: Lightning calls no teardown hook after an exception)."""

    def __init__(self) -> None:
        self.on: contextlib.ExitStack | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.on = contextlib.ExitStack()
        self.on.enter_context(quiet())

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if self.on is not None:
            self.on.close()
            self.on = None

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, module, "fit")


class StepReporter(L.Callback):
    """Hands each step's loss to the run's recorder, the same way every other trainer does.

    Where Lightning starts the training processes itself (``strategy=ddp_spawn``), they train with a copy of this
    callback, and no recorder: rank 0 keeps the curve and checks it (divergence). Lightning brings only the weights
    back to the main process, so rank 0 saves the curve to ``history_to``, and ``replay`` hands it to the recorder.
    """

    def __init__(self, on_step: OnStep, divergence_factor: float | None = None, requeue_to: str | None = None):
        self.on_step: OnStep | None = on_step
        self.requeue_to = requeue_to  # where to save the checkpoint that a requeued Slurm job resumes from
        self.history_to: str | None = None  # where a spawned rank 0 saves the curve (train() sets it)
        self.exception: BaseException | None = None
        self.worker = Recorder(divergence_factor)  # a spawned worker's curve and checks, until sent back
        self.pid = os.getpid()  # the process with the recorder
        self.spawned = False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "on_step": None}  # the recorder (and its MLflow client) stays in main

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self.spawned = os.getpid() != self.pid  # a process Lightning started, with a copy of this callback

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, *_: Any) -> None:
        step, loss = trainer.global_step - 1, outputs["loss"].item()
        if not self.spawned and self.on_step is not None:
            self.on_step(step, loss)
        elif trainer.is_global_zero:
            self.worker.on_step(step, loss)
        if self.requeue_to and signals.warned():  # Slurm's time-limit warning: save this step, then stop
            trainer.save_checkpoint(self.requeue_to, weights_only=False)
            raise signals.Requeue(step)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.spawned and trainer.is_global_zero and self.history_to:
            np.save(self.history_to, np.array([self.worker.steps, self.worker.losses], dtype=np.float64))

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        self.exception = exception

    def replay(self, on_step: OnStep) -> None:
        """In the main process: the curve a spawned rank 0 saved, to the recorder."""
        if self.history_to and os.path.isfile(self.history_to):
            steps, losses = np.load(self.history_to)
            for step, loss in zip(steps.tolist(), losses.tolist(), strict=True):
                on_step(int(step), loss)


class Steps:
    """The "dataloader": one empty batch per step, since the full batch lives in the module.
    (Not a plain range: DDP's spawn launcher rebuilds sequences it finds in fit's arguments.)"""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n

    # Lightning's interface of a resumable loader. Every batch is the same empty one, so there is no position to
    # keep: a resume from any step is exact (tests/test_reliability.py holds it bit for bit), and Lightning does
    # not warn that a checkpoint saved mid-"epoch" resumes a loader that cannot resume.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def spawns(strategy: Any) -> bool:
    """Whether Lightning starts the training processes itself, from the start method that its registry of
    strategy names gives (``ddp_spawn``: spawn; ``ddp_fork``, ``ddp_notebook``: fork; ``ddp``: none, it re-runs
    the command)."""
    if str(strategy) not in StrategyRegistry:  # auto, or an object (Trainer(strategy=DDPStrategy(...))): taken as none
        return False
    return StrategyRegistry[str(strategy)]["init_params"].get("start_method") in ("spawn", "fork", "forkserver")


def cluster_environment(strategy: Any) -> list[Any]:
    """Inside a Slurm job (srun), where the ranks come from: Slurm's tasks (``strategy=ddp``: one task per
    device, which hydra/launcher=slurm asks for), or Lightning's own processes (``ddp_spawn``: one task spawns
    them). Lightning's auto-requeue stays off: Slurm's time-limit warning is submitit's signal (USR2), acted on
    at a step's end (``StepReporter``), not Lightning's (USR1)."""
    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    if not SLURMEnvironment.detect():
        return []
    return [LightningEnvironment()] if spawns(strategy) else [SLURMEnvironment(auto_requeue=False)]


def train(
    problem: Problem, settings: Settings, on_step: OnStep, net: torch.nn.Module, criterion: torch.nn.Module,
    optimizer: Callable[..., torch.optim.Optimizer], trainer: Callable[..., L.Trainer],
) -> Result:
    """``net``, ``criterion``, ``optimizer`` (a partial, given the parameters) and ``trainer`` (Lightning's Trainer
    as trainer.pl builds it, a partial) are the harness's, instantiated from the run's config; this adds the
    callbacks that hand each step to ``on_step`` and keep the checkpoints."""
    torch.manual_seed(settings.seed)
    module = tutorial_module(problem, settings, net, criterion, optimizer)
    s = settings
    checkpointing = bool(s.checkpoint_dir and s.checkpoint_every)
    requeue_to = f"{s.checkpoint_dir}/last.ckpt" if checkpointing else None
    reporter = StepReporter(on_step, s.divergence_factor, requeue_to)
    callbacks: list[L.Callback] = [reporter]
    if checkpointing:
        callbacks.append(
            ModelCheckpoint(
                dirpath=s.checkpoint_dir,
                # one rolling last.ckpt; keep_checkpoints=N also keeps the N-1 latest steps. "step" is one of
                # Lightning's own monitor candidates; no "=" in the name (it would need quoting in ckpt_path=...)
                save_last=True,
                monitor="step",
                mode="max",
                save_top_k=s.keep_checkpoints - 1,
                filename="step_{step:06d}",
                auto_insert_metric_name=False,
                every_n_train_steps=s.checkpoint_every,
                enable_version_counter=False,  # a rolling file: never last-v1.ckpt beside last.ckpt
            )
        )
    strategy = getattr(trainer, "keywords", {}).get("strategy", "auto")
    if spawns(strategy):  # processes that start without this one's warning filters and log levels
        callbacks.append(Quiet())
    with quiet(resuming=bool(s.ckpt_path)):  # Lightning's lines that say nothing here (in processes it spawns: Quiet)
        fit: L.Trainer = trainer(
            callbacks=callbacks,
            plugins=cluster_environment(strategy),
            logger=False,  # the run's record is written by backproplab.tracking, like every other trainer's
            enable_checkpointing=checkpointing,
            # the run's progress line is every trainer's one, drawn by the harness from on_step (the reporter calls it)
            enable_progress_bar=False,
            profiler=NoProfiler(),
        )
        # DDP, or any processes Lightning starts itself (ddp_spawn even on one device): no requeue on Slurm's
        # time-limit warning, which those processes ignore (signals.warning_ignored)
        several = fit.world_size > 1 or spawns(strategy)
        if several:
            reporter.requeue_to = None
        with contextlib.ExitStack() as stack:
            if several:
                stack.enter_context(signals.warning_ignored())
                reporter.history_to = os.path.join(stack.enter_context(tempfile.TemporaryDirectory()), "history.npy")
            start = time.perf_counter()
            try:
                fit.fit(module, train_dataloaders=Steps(fit.max_steps), ckpt_path=s.ckpt_path)
            except SystemExit:
                # Lightning turns Ctrl-C into sys.exit(1) after its graceful shutdown; hand the interrupt on so
                # that the run is recorded as KILLED, not FAILED.
                if isinstance(reporter.exception, KeyboardInterrupt):
                    raise reporter.exception from None
                raise
            loop_s = time.perf_counter() - start
            reporter.replay(on_step)
        if checkpointing:  # collective under DDP: every rank calls it, rank 0 writes
            # weights_only said, as ModelCheckpoint says it: else Lightning logs a line about its default
            fit.save_checkpoint(f"{s.checkpoint_dir}/last.ckpt", weights_only=False)
    net = module.net.cpu().eval()  # as it is logged: a dynamic model served at its deepest path (backproplab.forward)
    return Result(weights=export_weights(net), loop_s=loop_s, model=net)


def tutorial_module(problem: Problem, settings: Settings, net: torch.nn.Module, criterion: torch.nn.Module,
                    optimizer: Any) -> TutorialModule:
    """The module for ``problem``: ``net`` in the problem's dtype, starting from its weights."""
    dtype = torch.float64 if problem.dtype == np.float64 else torch.float32
    net = load_weights(net.to(dtype), problem.weights)
    return TutorialModule(net, criterion, optimizer, problem, {"model": settings.model, "optim": settings.optim})


def gradients(problem: Problem, settings: Settings, net: torch.nn.Module, criterion: torch.nn.Module,
              optimizer: Any, **_: Any) -> dict[str, np.ndarray]:
    """The first step's gradients: the module's own forward and loss at step 0, and backward (for verify)."""
    module = tutorial_module(problem, settings, net, criterion, optimizer)
    module.criterion(module(module.x, 0), module.y).backward()
    return export_weights(module.net, attr="grad")


def predict(weights: dict[str, np.ndarray], problem: Problem, settings: Settings, net: torch.nn.Module,
            **_: Any) -> np.ndarray:
    """The net's forward pass of ``weights`` on problem.x, in eval mode (a dynamic model at its deepest path)."""
    dtype = torch.float64 if problem.dtype == np.float64 else torch.float32
    net = load_weights(net.to(dtype), weights).eval()
    with torch.no_grad():
        return net(torch.from_numpy(problem.x).to(dtype)).numpy()
