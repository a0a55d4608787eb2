"""One MLflow run: opened on enter (name, tags, params), steps written in batches, artifacts and the model at
the end, and the one place that decides FINISHED / FAILED / KILLED (``__exit__``).

Trainers never see this: they call ``on_step(step, loss)`` (backproplab.steps).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from backproplab.runtime import git_commit, hydra_overrides, is_rank_zero, mask_secrets, sweep_dir
from backproplab.steps import Recorder
from backproplab.tracking import names
from backproplab.tracking.figures import fit_plot, loss_curve
from backproplab.tracking.store import (
    SWEPT_TAG,
    TrackingError,
    chosen_uri,
    find_parent_run,
    open_store,
    retry_locked,
)

log = logging.getLogger("backproplab")


def flatten(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as dotted params, without the instantiate nodes (``model.net``,
    ``optim.optimizer``, ``loss.criterion``) whose values repeat the keys beside them."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            if "_target_" in node or prefix == "trainer.supports.":  # the registry's, the same for every run
                return
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    if "logger.tracking_uri" in out:
        out["logger.tracking_uri"] = mask_secrets(out["logger.tracking_uri"])
    return out

def resolved_yaml(cfg: DictConfig, resolve: bool = True) -> str:
    """The (resolved) config as YAML, with any secret in the tracking URI masked."""
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=resolve))
    if resolved.get("logger", {}).get("tracking_uri"):
        resolved.logger.tracking_uri = mask_secrets(resolved.logger.tracking_uri)
    return OmegaConf.to_yaml(resolved)

class MlflowTracker(Recorder):
    """One MLflow run: opened on enter, closed with the right status on exit."""

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg.trainer.get("divergence_factor"))
        self.cfg = cfg
        self.flush_every = int(cfg.logger.get("flush_every", 1000))
        self.flush_seconds = float(cfg.logger.get("flush_seconds", 5.0))
        self._pending: list[Any] = []
        self._t0 = time.perf_counter()
        self._flushed: float | None = None  # when the last batch was written; the clock starts at step 0

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> MlflowTracker:
        import mlflow

        # MLflow prints a server's run address with the URI's credentials; this run prints its own, masked
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.client, exp_id = open_store(self.cfg.logger)
        self.experiment_id = exp_id
        user_uri = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.client.tracking_uri)
        # MLflow also exports the URI to the environment; the next job of an in-process sweep must still see
        # the user's own setting (or none), not this job's store
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        if user_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = user_uri
        c = self.cfg
        overrides = hydra_overrides()
        tags = {
            "trainer": c.trainer.name,
            "model": c.model.name,
            "optim": c.optim.name,
            "loss": c.loss.name,
            "overrides": " ".join(overrides),
            # the run's description in the UI: the command that makes it again
            "mlflow.note.content": names.command(overrides),
        }
        self.note = tags["mlflow.note.content"]
        if c.get("preset"):
            tags["preset"] = c.preset
        if commit := git_commit():
            tags["mlflow.source.git.commit"] = commit
        parent = None
        if sweep := sweep_dir():
            parent = find_parent_run(self.client, exp_id, sweep)
        swept = parent.data.tags.get(SWEPT_TAG, "").split() if parent else []
        self.run = retry_locked(
            mlflow.start_run,
            experiment_id=exp_id,
            run_name=names.run_name(c, overrides, swept),
            parent_run_id=parent.info.run_id if parent else None,
            tags=tags,
        )
        self.run_id = self.run.info.run_id
        try:
            retry_locked(mlflow.log_params, flatten(self.cfg))
        except Exception as e:  # the run exists now: it must not stay RUNNING
            retry_locked(mlflow.end_run, status="FAILED")
            raise TrackingError(f"cannot write to the MLflow store: {str(e).splitlines()[0][:300]}") from None
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> bool:
        import mlflow

        try:
            self.flush()
            ckpts = self.cfg.trainer.get("checkpoint_dir")
            if ckpts and Path(ckpts).is_dir() and any(Path(ckpts).iterdir()):
                # also after a failure: they allow a resume
                retry_locked(mlflow.log_artifacts, ckpts, "checkpoints")
        finally:
            if exc_type is None:
                status = "FINISHED"
            elif issubclass(exc_type, KeyboardInterrupt):
                status = "KILLED"
            else:
                status = "FAILED"
                retry_locked(mlflow.set_tag, "failure_reason", str(exc)[:5000] or exc_type.__name__)
            retry_locked(mlflow.end_run, status=status)
            page = names.run_page(self.client.tracking_uri, self.experiment_id, self.run_id,
                                  default_store=chosen_uri(self.cfg.logger) is None)
            log.info("%s run %s: %s", status, self.run.info.run_name, page)
        return False

    # -- per step --------------------------------------------------------------------------------
    def on_step(self, step: int, loss: float) -> None:
        from mlflow.entities import Metric

        super().on_step(step, loss)
        self._pending.append(Metric("train/loss", self.losses[-1], int(time.time() * 1000), step))
        # a database write costs ~20 ms, a whole tutorial step ~0.5 ms: write in batches, by count or by age
        # (so a long run's curve still shows up live in the UI)
        now = time.perf_counter()
        if self._flushed is None:
            self._flushed = now
        if len(self._pending) >= self.flush_every or now - self._flushed > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """One database write for all buffered steps (MLflow allows 1000 metrics per batch)."""
        while self._pending:
            batch = self._pending[:1000]
            retry_locked(self.client.log_batch, self.run_id, metrics=batch, synchronous=True)
            del self._pending[: len(batch)]
        self._flushed = time.perf_counter()

    # -- at the end ------------------------------------------------------------------------------
    def finish(self, result: Any, problem: Any) -> None:
        import mlflow

        self.flush()
        steps = len(self.losses)
        retry_locked(
            mlflow.log_metrics,
            {
                "final_loss": self.losses[-1],
                "time/total_s": time.perf_counter() - self._t0,
                "time/loop_s": result.loop_s,
                "time/step_ms": 1000 * result.loop_s / max(steps, 1),
                "throughput/samples_per_s": problem.x.shape[0] * steps / max(result.loop_s, 1e-12),
                **{f"time/{key}": value for key, value in result.timings.items()},
            }
        )
        retry_locked(mlflow.log_text, resolved_yaml(self.cfg), "config.yaml")
        # with its interpolations kept (optim.optimizer.lr: ${..lr}), so that +rerun overrides propagate
        retry_locked(mlflow.log_text, resolved_yaml(self.cfg, resolve=False), "config_source.yaml")
        if problem.repeats is not None:
            retry_locked(mlflow.log_text, json.dumps(problem.repeats.tolist()), "repeat_schedule.json")
        retry_locked(mlflow.log_figure, loss_curve(self.steps, self.losses, self.cfg), "loss_curve.png")
        self.log_dataset(problem)
        self.log_fit(result, problem)
        self.log_weights(result)

    def log_dataset(self, problem: Any) -> None:
        """The training data as an MLflow dataset input: the UI's Dataset column says what the run trained on."""
        import mlflow
        import mlflow.data

        dataset = mlflow.data.from_numpy(problem.x, targets=problem.y, name=problem.name)
        retry_locked(mlflow.log_input, dataset, context="training")

    def log_fit(self, result: Any, problem: Any) -> None:
        """A formula model's fit: the formula (tag ``fit.formula``, ``result.txt``, the description's second line),
        ``fit.png`` against the data, and the curves as ``fit.json`` (which the sweep report overlays)."""
        import mlflow

        if problem.formula is None:
            return
        text = problem.formula(result.weights)
        log.info("Result: %s", text)
        tags = {"fit.formula": text, "mlflow.note.content": f"{self.note}\n\nResult: {text}"}
        retry_locked(mlflow.set_tags, tags)
        retry_locked(mlflow.log_text, f"Result: {text}\n", "result.txt")
        curves = problem.curves(result.weights)
        every = max(1, len(problem.x) // 400)  # enough points for a smooth line, a small file
        fit = {
            "x": problem.x[::every].tolist(),
            "y": problem.y[::every].tolist(),
            "curves": {name: c[::every].tolist() for name, c in curves.items()},
        }
        retry_locked(mlflow.log_text, json.dumps(fit), "fit.json")
        retry_locked(mlflow.log_figure, fit_plot(fit, f"{self.run.info.run_name}: {text}"), "fit.png")

    def log_weights(self, result: Any) -> None:
        import mlflow

        if result.model is not None:  # a torch module
            import mlflow.pytorch
            import torch

            # pickle format: the default (pt2) traces one path through forward(), which is wrong for
            # the dynamic net's Python control flow (MLflow warns about pickle; we chose it knowingly).
            # Explicit requirements: MLflow's inference of them costs seconds per run.
            logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
            retry_locked(
                mlflow.pytorch.log_model,
                result.model.cpu(),
                name="model",
                serialization_format="pickle",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
        else:  # numpy / TensorFlow: the arrays themselves
            import numpy as np

            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "weights.npz")
                np.savez(path, **result.weights)
                retry_locked(mlflow.log_artifact, path)

def record_refusal(cfg: DictConfig, error: Exception) -> None:
    """A multirun job whose config was refused still leaves a FAILED child run with the reason, so that the
    sweep's summary, exit code and report count it. Best effort: a broken store is reported elsewhere."""
    if cfg.logger.name != "mlflow" or not is_rank_zero():
        return
    with contextlib.suppress(Exception), MlflowTracker(cfg):
        raise error

def make_tracker(cfg: DictConfig) -> Recorder:
    if cfg.logger.name == "mlflow" and is_rank_zero():
        return MlflowTracker(cfg)
    return Recorder(cfg.trainer.get("divergence_factor"))
