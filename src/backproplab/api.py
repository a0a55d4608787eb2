"""``backproplab.train``: a run from Python (a notebook, a script), as the CLI makes it.

    import backproplab
    result = backproplab.train("experiment=optim", "optim.lr=1e-3", "trainer.max_steps=200")
    result.status, result.final_loss, result.run_id

The same config tree and overrides as ``python scripts/train.py``, composed with Hydra's compose API and run
through Hydra's own ``run_job``: the same validation, the same default store (``./mlflow.db``), an output folder
``outputs/<date>/<time>/`` with Hydra's files and log, and a run whose description is the matching CLI line
(``backproplab-train experiment=optim ...``). Several calls in one process each make their own run and pay the
imports once. A bad override raises :class:`ConfigError` with the CLI's one-line message; a run that fails in
training (it diverges, a trainer raises) returns with ``status="FAILED"`` and its ``reason``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, open_dict

from backproplab.runtime import ConfigError


@dataclass(frozen=True)
class TrainResult:
    """One run's outcome: its MLflow run (None with ``logger=none``), status, and curve."""

    run_id: str | None
    status: str  # FINISHED or FAILED (Ctrl-C raises KeyboardInterrupt, the run recorded KILLED)
    losses: tuple[float, ...]  # train/loss at each step of this run
    final_loss: float  # the last step's loss (nan when no step ran)
    reason: str | None  # why it FAILED
    output_dir: str  # Hydra's output folder: .hydra/, the log, checkpoints


def train(*overrides: str, config_name: str = "config") -> TrainResult:
    """Train once with these overrides (as on the command line, without ``-m``) and record it in MLflow."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import run_job
    from hydra.errors import HydraException
    from hydra.types import HydraContext

    from backproplab.cli import unknown_option
    from backproplab.runtime import conf_dir
    from backproplab.suggest import composition_error

    if line := unknown_option(list(overrides)):
        raise ConfigError(line.removeprefix("error: "))
    GlobalHydra.instance().clear()  # the API composes its own config tree, whatever was initialized before
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name="backproplab"):
        try:
            cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
        except HydraException as e:  # Hydra's refusal of an override: the CLI's one line
            raise ConfigError(composition_error(e).removeprefix("error: ")) from None
        with open_dict(cfg):
            cfg.hydra.run.dir = _fresh(str(cfg.hydra.run.dir))
        context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks(cfg))
        ran = run_job(hydra_context=context, task_function=_task, config=cfg, job_dir_key="hydra.run.dir",
                      job_subdir_key=None)
    outcome = ran.return_value
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _fresh(folder: str) -> str:
    """Hydra's ``outputs/<date>/<time>``, or with ``_1``, ``_2``... when a call in the same second has it."""
    candidate, n = folder, 0
    while Path(candidate).exists():
        n += 1
        candidate = f"{folder}_{n}"
    return candidate


def _task(cfg: DictConfig) -> TrainResult | BaseException:
    """The job Hydra runs: a result, or the error to raise once Hydra has put its state back (a ConfigError, a
    store that cannot be opened: nothing trained). Returned, not raised: Hydra would print it once more."""
    from backproplab import run, signals
    from backproplab.runtime import discard_job_dir, job_dir

    run.mask_secrets_of_this_job()
    records: list = []
    in_main = threading.current_thread() is threading.main_thread()
    restore = signals.install() if in_main else None
    status, reason = "FINISHED", None
    try:
        run.train(cfg, records.append)
    except Exception as e:
        if not records:  # refused before the run opened; a refused config leaves no output folder either
            if isinstance(e, ConfigError):
                discard_job_dir()
            return e
        status, reason = "FAILED", str(e)
    finally:
        if restore is not None:
            restore()
    losses = tuple(records[0].losses)
    return TrainResult(records[0].run_id, status, losses, losses[-1] if losses else math.nan, reason,
                       str(job_dir()))
