"""Every MLflow call of a run lives here: the store, the parent/child relation, buffered step metrics,
artifacts and the final status. Trainers only ever see ``recorder.on_step(step, loss)``.

``__exit__`` is the one place that decides FINISHED / FAILED / KILLED.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from omegaconf import DictConfig, OmegaConf

from backproplab import names

log = logging.getLogger("backproplab")
EXPERIMENT_TAGS = {
    # MLflow 3's UI opens an experiment of this kind on its model-training view (runs, metric charts)
    "mlflow.experimentKind": "custom_model_development",
}
SWEEP_TAG = "backproplab.sweep_dir"  # on a multirun's parent run; jobs find their parent by it
SWEPT_TAG = "backproplab.swept"  # on the parent: the keys the sweep varies, which the children's names show


class Diverged(RuntimeError):
    """The loss became NaN or inf, or grew past ``trainer.divergence_factor`` times the first step's loss."""

    def __init__(self, step: int, value: float, why: str = ""):
        super().__init__(f"loss diverged at step {step}: train/loss={value:.4g}{why}")
        self.step, self.value = step, value


class TrackingError(RuntimeError):
    """The MLflow store cannot be used; raised before any training starts."""


class Recorder:
    """Collects the loss of every step; the base of both trackers (``logger=none`` is this).

    A step whose loss is NaN/inf, or above ``divergence_factor`` times the first step's loss, raises
    :class:`Diverged` before it is kept: a run at lr=10 stops while its curve still means something, and the
    experiment's chart is not flattened by a 1e37.
    """

    def __init__(self, divergence_factor: float | None = None) -> None:
        self.steps: list[int] = []  # not always 0..n-1: a resumed run starts at its checkpoint's step
        self.losses: list[float] = []
        self.run_id: str | None = None
        self.divergence_factor = divergence_factor

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False

    def on_step(self, step: int, loss: float) -> None:
        loss = float(loss)
        if not math.isfinite(loss):
            raise Diverged(step, loss)
        factor = self.divergence_factor
        if factor and self.losses and loss > factor * self.losses[0]:
            raise Diverged(
                step, loss, f" > trainer.divergence_factor={factor:g} x the first step's loss {self.losses[0]:.4g}"
            )
        self.steps.append(step)
        self.losses.append(loss)

    def finish(self, result: Any, problem: Any) -> None:
        """Nothing to record."""


def mask_secrets(uri: str) -> str:
    """``http://user:password@host`` -> ``http://user:***@host``; ``https://TOKEN@host`` -> ``https://***@host``;
    also tokens in a query string."""
    uri = re.sub(r"//([^/:@]+):([^/@]+)@", r"//\1:***@", uri)
    uri = re.sub(r"//([^/:@*]+)@", r"//***@", uri)  # a bare token as the user part
    return re.sub(r"(?i)((?:token|password|secret|key)=)[^&]+", r"\1***", uri)


def launch_dir() -> Path:
    """The directory the user launched from (Hydra's runtime.cwd), whatever Hydra's output dir is."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.cwd)
    return Path.cwd()


def chosen_uri(logger_cfg: DictConfig) -> str | None:
    """The store the user chose (``logger.tracking_uri``, else ``MLFLOW_TRACKING_URI``), or None: the default."""
    uri = logger_cfg.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    return str(uri) if uri else None


def store_location(logger_cfg: DictConfig) -> tuple[str, str | None]:
    """(tracking URI, artifact root for new experiments).

    ``logger.tracking_uri`` wins, then MLflow's own ``MLFLOW_TRACKING_URI``; the default is MLflow's default,
    ``sqlite:///<launch dir>/mlflow.db``, so that ``mlflow ui``, ``mlflow runs list`` and ``runs:/`` URIs find
    the runs from the launch directory with no flags. Artifacts go to ``<launch dir>/mlruns/``. Both absolute.
    """
    if uri := chosen_uri(logger_cfg):
        return uri, None
    here = launch_dir().resolve()
    db, old = here / "mlflow.db", here / "mlruns" / "mlflow.db"
    if old.is_file() and not db.exists():
        log.warning(
            "this run records in %s (MLflow's default store); the runs of %s stay there: to keep using that "
            "store, run with logger.tracking_uri=sqlite:///%s", db, old, old,
        )
    return f"sqlite:///{db}", (here / "mlruns").as_uri()


def open_store(logger_cfg: DictConfig) -> tuple[Any, str]:
    """(MlflowClient, experiment id), or one clear TrackingError: an unwritable directory, a file that is
    not a sqlite database, a locked database or an unreachable server must stop a run before it trains,
    not after an hour of training with nowhere to write."""
    from mlflow.tracking import MlflowClient

    uri = str(logger_cfg.get("tracking_uri") or "")
    try:
        uri, artifact_location = store_location(logger_cfg)
        if uri.startswith(("http://", "https://")):
            _probe(uri)
        with _creation_lock(uri):
            client = MlflowClient(uri)
            name = logger_cfg.experiment_name
            # one artifact folder per experiment: mlruns/<experiment>/<run id>/artifacts, .../models/...
            where = f"{artifact_location}/{quote(name, safe='')}" if artifact_location else None
            exp_id = get_or_create_experiment(client, name, where)
    except Exception as e:  # MLflow raises many types here; all mean the same thing to the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrackingError(
            f"logger.tracking_uri={mask_secrets(uri) or '(default)'}: cannot open the MLflow store: {reason[:300]}"
            " (fix the path/server, or run with logger=none)"
        ) from None
    return client, exp_id


def _probe(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not after MLflow's minutes of HTTP retries, when nothing listens."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    with socket.create_connection((parts.hostname, port), timeout=timeout):
        pass


@contextlib.contextmanager
def _creation_lock(uri: str) -> Iterator[None]:
    """Serialize the first opening of a sqlite store across processes: MLflow creates the schema on first
    use, and several processes doing that at once crash on migration races."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri.removeprefix("sqlite:///"))
    if db.exists() and db.stat().st_size > 0 and not _is_sqlite(db):
        raise TrackingError(f"{db} exists but is not a sqlite database")
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / ".mlflow.db.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(16) == b"SQLite format 3\x00"


def get_or_create_experiment(client: Any, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_TAGS)
        except Exception:  # another process created it between our two calls
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    return exp.experiment_id


def flatten(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as dotted params, without the instantiate nodes (``model.net``,
    ``optim.optimizer``, ``loss.criterion``) whose values repeat the keys beside them."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            if "_target_" in node:
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


def hydra_overrides() -> list[str]:
    """This job's overrides as typed (a sweep job: its own values), secrets masked."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [mask_secrets(o) for o in HydraConfig.get().overrides.task]


def git_commit() -> str | None:
    try:
        out = subprocess.run(  # the commit of the code that runs, wherever it was launched from
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def sweep_dir() -> str | None:
    """The multirun's sweep dir when this process is a multirun job, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return str(Path(HydraConfig.get().sweep.dir).resolve())
    return None


def find_parent_run(client: Any, experiment_id: str, sweep: str) -> Any:
    """The multirun's parent run (created by the sweep callback), or None."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}'", max_results=1
    )
    return runs[0] if runs else None


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
        if c.get("preset"):
            tags["preset"] = c.preset
        if commit := git_commit():
            tags["mlflow.source.git.commit"] = commit
        parent = None
        if sweep := sweep_dir():
            parent = find_parent_run(self.client, exp_id, sweep)
        swept = parent.data.tags.get(SWEPT_TAG, "").split() if parent else []
        self.run = mlflow.start_run(
            experiment_id=exp_id,
            run_name=names.run_name(c, overrides, swept),
            parent_run_id=parent.info.run_id if parent else None,
            tags=tags,
        )
        self.run_id = self.run.info.run_id
        try:
            _retry_locked(mlflow.log_params, flatten(self.cfg))
        except Exception as e:  # the run exists now: it must not stay RUNNING
            mlflow.end_run(status="FAILED")
            raise TrackingError(f"cannot write to the MLflow store: {str(e).splitlines()[0][:300]}") from None
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> bool:
        import mlflow

        try:
            self.flush()
            ckpts = self.cfg.trainer.get("checkpoint_dir")
            if ckpts and Path(ckpts).is_dir() and any(Path(ckpts).iterdir()):
                mlflow.log_artifacts(ckpts, "checkpoints")  # also after a failure: they allow a resume
        finally:
            if exc_type is None:
                status = "FINISHED"
            elif issubclass(exc_type, KeyboardInterrupt):
                status = "KILLED"
            else:
                status = "FAILED"
                mlflow.set_tag("failure_reason", str(exc)[:5000] or exc_type.__name__)
            mlflow.end_run(status=status)
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
            _retry_locked(self.client.log_batch, self.run_id, metrics=batch, synchronous=True)
            del self._pending[: len(batch)]
        self._flushed = time.perf_counter()

    # -- at the end ------------------------------------------------------------------------------
    def finish(self, result: Any, problem: Any) -> None:
        import mlflow

        self.flush()
        steps = len(self.losses)
        mlflow.log_metrics(
            {
                "final_loss": self.losses[-1],
                "time/total_s": time.perf_counter() - self._t0,
                "time/loop_s": result.loop_s,
                "time/step_ms": 1000 * result.loop_s / max(steps, 1),
                "throughput/samples_per_s": problem.x.shape[0] * steps / max(result.loop_s, 1e-12),
            }
        )
        mlflow.log_text(resolved_yaml(self.cfg), "config.yaml")
        # with its interpolations kept (optim.optimizer.lr: ${..lr}), so that +rerun overrides propagate
        mlflow.log_text(resolved_yaml(self.cfg, resolve=False), "config_source.yaml")
        if problem.repeats is not None:
            mlflow.log_text(json.dumps(problem.repeats.tolist()), "repeat_schedule.json")
        mlflow.log_figure(loss_curve(self.steps, self.losses, self.cfg), "loss_curve.png")
        self.log_weights(result)

    def log_weights(self, result: Any) -> None:
        import mlflow

        if result.model is not None:  # a torch module
            import mlflow.pytorch
            import torch

            # pickle format: the default (pt2) traces one path through forward(), which is wrong for
            # the dynamic net's Python control flow (MLflow warns about pickle; we chose it knowingly).
            # Explicit requirements: MLflow's inference of them costs seconds per run.
            logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
            mlflow.pytorch.log_model(
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
                mlflow.log_artifact(path)


def _retry_locked(write: Any, *args: Any, attempts: int = 6, **kwargs: Any) -> None:
    """sqlite allows one writer at a time; under parallel sweep jobs a write can time out on the lock.
    Back off and retry rather than lose the steps."""
    for i in range(attempts):
        try:
            return write(*args, **kwargs)
        except Exception as e:
            if "database is locked" not in str(e) or i == attempts - 1:
                raise
            time.sleep(0.2 * 2**i)


def loss_curve(steps: list[int], losses: list[float], cfg: DictConfig) -> Any:
    """The run's train/loss on a log scale (a bare Figure: no pyplot state, no GUI backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=80)
    ax = fig.add_subplot()
    ax.plot(steps, losses)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("train/loss")
    ax.set_title(f"{cfg.trainer.name} · {cfg.model.name} · {cfg.optim.name} (lr={cfg.optim.lr})")
    fig.tight_layout()
    return fig


def is_rank_zero() -> bool:
    """False in the extra processes of a distributed run: Lightning's DDP launcher re-runs this script
    with LOCAL_RANK/NODE_RANK set, SLURM starts one task per process. Only rank 0 records."""
    return all(os.environ.get(var, "0") == "0" for var in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


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
