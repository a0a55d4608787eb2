"""One MLflow run: opened on enter (name, tags, params), steps written in batches, artifacts and the model at
the end, and the one place that decides FINISHED / FAILED / KILLED (``__exit__``).

Trainers never see this: they call ``on_step(step, loss)`` (backproplab.steps).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from backproplab import runtime, signals
from backproplab.runtime import git_commit, hydra_overrides, is_rank_zero, mask_secrets, sweep_dir
from backproplab.steps import Recorder
from backproplab.tracking import code, logged_model, names
from backproplab.tracking.figures import fit_plot, loss_curve
from backproplab.tracking.params import flatten, resolved_yaml
from backproplab.tracking.spool import ServerAway, Spool, apply, bound_http_retries, send
from backproplab.tracking.store import (
    AUTO_TAG,
    HOST_TAG,
    JOB_TAG,
    OPEN_TAG,
    PARENT_TAG,
    RESTARTS_TAG,
    SLURM_TAG,
    SWEPT_TAG,
    TrackingError,
    chosen_uri,
    find_parent_run,
    interrupts_held,
    open_store,
    refusal,
)

log = logging.getLogger("backproplab")


class MlflowTracker(Recorder):
    """One MLflow run: opened on enter, closed with the right status on exit. Every write after the opening is
    an operation (``tracking.spool``): applied at once, or, while the server is away, kept in a spool."""

    def __init__(self, cfg: DictConfig, auto_keys: Sequence[str] = (), resume: str | None = None,
                 step: dict[str, Any] | None = None):
        super().__init__(cfg.trainer.get("divergence_factor"))
        self.cfg = cfg
        self.step = step  # the code of its step (backproplab.run.step_of), logged under code/
        self.auto_keys = list(auto_keys)  # keys the run chose itself: tagged, so that a report labels them "auto"
        self.resume = resume  # a run this (restarted Slurm) job goes on in, rather than a new one
        self._logged_through = -1  # the last step a resumed run had logged: computed again, not logged twice
        self._earlier = 0  # how many of self.losses a resumed run had before this process
        self._computed = 0  # steps this process computed
        self.flush_every = int(cfg.logger.get("flush_every", 1000))
        self.flush_seconds = float(cfg.logger.get("flush_seconds", 5.0))
        self.server_timeout = float(cfg.logger.get("server_timeout", 60.0))
        self._pending: list[tuple] = []  # (key, value, timestamp, step[, the model's id it is linked to])
        self._t0 = time.perf_counter()
        self._flushed: float | None = None  # when the last batch was written; the clock starts at step 0
        self.spool: Spool | None = None  # set once the server is away: every later write goes there
        self._interrupted = False  # Ctrl-C / SIGTERM: the last writes wait for the server only briefly
        self._waiting = False  # the write under way has found the server away
        self._create_tried = False  # a create_run was sent: a retry looks for the run it may have made
        self.run: Any = None  # the MLflow run, once created
        self._files: Path | None = None  # a temporary folder for the artifacts, written there before sending
        self.parent: Any = None  # a sweep job's parent run (found by its sweep dir), as the run opened

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> MlflowTracker:
        # MLflow prints a server's run address with the URI's credentials; this run prints its own, masked
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.client, exp_id = open_store(self.cfg.logger)
        self.experiment_id = exp_id
        self._server = self.client.tracking_uri.startswith(("http://", "https://"))
        self._restore_http = bound_http_retries(self.server_timeout)
        try:
            return self._open_run(exp_id)
        except BaseException:  # no __exit__ follows: put MLflow's variables back here
            self._restore_http()
            raise

    def _open_run(self, exp_id: str) -> MlflowTracker:
        import mlflow
        from mlflow.entities import Param
        from mlflow.tracking.context import registry

        user_uri = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.client.tracking_uri)  # for mlflow.pytorch.log_model
        # MLflow also exports the URI to the environment; the next job of an in-process sweep must still see
        # the user's own setting (or none), not this job's store
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        if user_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = user_uri
        if self.resume:
            return self._reopen(self.resume)
        c = self.cfg
        overrides = hydra_overrides()
        tags = {
            "trainer": c.trainer.name,
            "model": c.model.name,
            "optim": c.optim.name,
            "loss": c.loss.name,
            HOST_TAG: socket.gethostname(),
            "overrides": " ".join(overrides),
            # the run's description in the UI: the command that makes it again
            "mlflow.note.content": names.command(overrides),
        }
        if self.step is not None:  # one more line: where its code is
            tags["mlflow.note.content"] += "\n\n" + code.line(self.step)
        self.note = tags["mlflow.note.content"]
        if c.get("preset"):
            tags["preset"] = c.preset
        if self.auto_keys:
            tags[AUTO_TAG] = " ".join(self.auto_keys)
        if commit := git_commit():
            tags["mlflow.source.git.commit"] = commit
        if job := runtime.slurm_job():  # runtime's, not slurm/'s: slurm/ imports tracking
            tags[SLURM_TAG] = job
        if sweep_dir() and HydraConfig.initialized():
            tags[JOB_TAG] = str(HydraConfig.get().job.num)  # the job's place in its sweep (the lesson's order)
        if sweep := sweep_dir():
            self.parent = find_parent_run(self.client, exp_id, sweep)
            if self.parent:
                tags[PARENT_TAG] = self.parent.info.run_id
        swept = self.parent.data.tags.get(SWEPT_TAG, "").split() if self.parent else []
        tags[OPEN_TAG] = uuid.uuid4().hex
        try:
            send(self._create_run, exp_id, names.run_name(c, overrides, swept), registry.resolve_tags(tags),
                 timeout=self.server_timeout, server=self._server)
            self.run_id, self.name = self.run.info.run_id, self.run.info.run_name
            params = [Param(k, v) for k, v in flatten(self.cfg).items()]
            send(self.client.log_batch, self.run_id, params=params, synchronous=True, timeout=self.server_timeout,
                 server=self._server)
            if self.step is not None:
                self._write({"op": "folder", "path": str(code.folder(self.step, self._scratch())), "dir": "code"})
        except BaseException as e:  # once the run exists, it must not stay RUNNING
            if self.run is not None:
                with contextlib.suppress(Exception):
                    status = "KILLED" if isinstance(e, KeyboardInterrupt) or signals.received() else "FAILED"
                    send(self.client.set_terminated, self.run.info.run_id, status, timeout=5, server=self._server)
            if isinstance(e, ServerAway):
                raise TrackingError(f"{mask_secrets(self.client.tracking_uri)}: {e}") from None
            if isinstance(e, Exception):
                reason = refusal(str(e)) or (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise TrackingError(f"cannot write to the MLflow store: {mask_secrets(reason)}") from None
            raise  # Ctrl-C (held until the run was made, when it came during its creation)
        return self

    def _reopen(self, run_id: str) -> MlflowTracker:
        """Go on in the run this Slurm job started before it was requeued: its curve so far is read back (the
        steps computed again are not logged twice), and it is RUNNING again until this job closes it."""
        try:
            self.run = send(self.client.get_run, run_id, timeout=self.server_timeout, server=self._server)
            self.name = self.run.info.run_name
            self.run_id, self.note = run_id, self.run.data.tags.get("mlflow.note.content", "")
            history = send(self.client.get_metric_history, run_id, "train/loss", timeout=self.server_timeout,
                           server=self._server)
            for metric in sorted(history, key=lambda m: m.step):
                self.steps.append(metric.step)
                self.losses.append(metric.value)
            self._logged_through, self._earlier = (self.steps[-1] if self.steps else -1), len(self.steps)
            restarts = {SLURM_TAG: runtime.slurm_job() or "", RESTARTS_TAG: str(runtime.slurm_restarts())}
            send(apply, self.client, run_id, {"op": "tags", "tags": restarts}, timeout=self.server_timeout,
                 server=self._server)
            if "failure_reason" in self.run.data.tags:  # why it stopped before: over once it goes on
                send(self.client.delete_tag, run_id, "failure_reason", timeout=self.server_timeout,
                     server=self._server)
            send(self.client.update_run, run_id, "RUNNING", timeout=self.server_timeout, server=self._server)
        except BaseException as e:  # it must not stay RUNNING with no job behind it
            with contextlib.suppress(Exception):
                send(self.client.set_terminated, run_id, "KILLED", timeout=5, server=self._server)
            if isinstance(e, Exception):
                raise TrackingError(f"cannot reopen run {run_id} to resume it: {mask_secrets(str(e))[:300]}") from None
            raise
        log.info("resuming run %s after %d logged steps (Slurm restart %d)", run_id, self._earlier,
                 runtime.slurm_restarts())
        return self

    def _create_run(self, exp_id: str, name: str, tags: dict[str, str]) -> None:
        """Sets ``self.run``, created once (so that a Ctrl-C held during the create finds it). The client, not
        mlflow.start_run: no process-wide active run, which MLflow would end at exit. A create that timed out may
        have reached a slow server: its retry looks for that run first."""
        if self._create_tried:
            made = self.client.search_runs([exp_id], f"tags.`{OPEN_TAG}` = '{tags[OPEN_TAG]}'", max_results=1)
            if made:
                self.run = made[0]
                return
        self._create_tried = True
        self.run = self.client.create_run(exp_id, run_name=name, tags=tags)

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> bool:
        # an interrupt dropped by a finalizer, or turned into another error by a library, is still the interrupt
        interrupt = exc if isinstance(exc, (KeyboardInterrupt, signals.Requeue)) else signals.received()
        error = exc if interrupt is None else None
        if isinstance(exc, signals.Requeue):
            exc.run_id = self.run_id  # for a requeue that submitit then declines
        if interrupt:
            self._hurry()
        try:
            try:
                self.flush()
                ckpts = self.cfg.trainer.get("checkpoint_dir")
                # also after a failure: they allow a resume; not before a requeue, which must be quick (the time
                # limit is near) and whose restart logs them at its end
                requeue = isinstance(interrupt, signals.Requeue)
                if ckpts and not requeue and Path(ckpts).is_dir() and any(Path(ckpts).iterdir()):
                    self._write({"op": "folder", "path": str(Path(ckpts).resolve()), "dir": "checkpoints"})
            except KeyboardInterrupt as e:  # Ctrl-C / SIGTERM during these last writes
                interrupt = interrupt or e
                self._hurry()
                self.flush()  # what it left unsent: sent at once, or kept
            except Exception as e:  # a store that refuses a write: the run still gets its status
                error = error or e
                raise
            finally:
                status = "KILLED" if interrupt else "FAILED" if error else "FINISHED"
                if error is not None:
                    reason = mask_secrets(str(error))[:5000] or type(error).__name__
                    self._write({"op": "tags", "tags": {"failure_reason": reason}})
                elif interrupt is not None:
                    t = self.cfg.trainer
                    why = signals.describe(interrupt, bool(t.get("checkpoint_dir") and t.get("checkpoint_every")))
                    self._write({"op": "tags", "tags": {"failure_reason": why}})
                self._write({"op": "end", "status": status})
        finally:
            if self._files is not None:
                shutil.rmtree(self._files, ignore_errors=True)
            self._restore_http()
        if self.spool is None:
            page = names.run_page(self.client.tracking_uri, self.experiment_id, self.run_id,
                                  default_store=chosen_uri(self.cfg.logger) is None)
            log.info("%s run %s: %s", status, self.run.info.run_name, page)
        else:
            folder = self.spool.folder
            away = (f"the tracking server {mask_secrets(self.client.tracking_uri)} went away: this {status} run's "
                    f"unsent steps, final metrics and artifacts are kept in {folder}; once the server is back, "
                    f"send them with: python scripts/sync.py {folder}")
            if exc is None and interrupt is None:
                raise ServerAway(away)
            (interrupt or exc).add_note(away)  # type: ignore[union-attr]  # reported with the run's own error
        if interrupt is not None and interrupt is not exc:
            raise interrupt
        return False

    # -- writing ---------------------------------------------------------------------------------
    def _hurry(self) -> None:
        """Interrupted: the last writes wait for an away server briefly, not ``server_timeout``."""
        self._interrupted = True
        if int(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")) > 5:
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "5"

    def _failing(self) -> None:
        self._waiting = True

    def _write(self, op: dict[str, Any]) -> str | None:
        """Apply one operation to the run (returns what apply returns: a model's id), or keep it in the spool once
        the server is away."""
        if self.spool is None:
            self._waiting = False  # set by send once the server fails to answer this write
            try:
                timeout = min(self.server_timeout, 5.0) if self._interrupted else self.server_timeout
                return send(apply, self.client, self.run_id, op, timeout=timeout, server=self._server,
                            failing=self._failing)
            except ServerAway:
                self._open_spool()
            except KeyboardInterrupt:
                if not (self._waiting or self._interrupted):
                    raise  # a healthy write, cut short: the caller still holds it (a metric batch stays pending)
                self._open_spool()  # interrupted while waiting for the server: keep this write, stop waiting
                self.spool.append(op)  # type: ignore[union-attr]
                if not self._interrupted:
                    raise
                return None
        self.spool.append(op)  # type: ignore[union-attr]
        return None

    def _open_spool(self) -> None:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            folder = Path(HydraConfig.get().runtime.output_dir) / "spool"
        else:  # compose-API callers (verify, bench)
            folder = Path(tempfile.mkdtemp(prefix="backproplab-spool-"))
        self.spool = Spool.create(folder, self.client.tracking_uri, self.run_id, self.run.info.run_name)
        log.warning("the tracking server is away: this run's record goes on in %s", folder)

    def _scratch(self) -> Path:
        """The local folder where artifacts are written before they are sent (removed when the run closes)."""
        if self._files is None:
            self._files = Path(tempfile.mkdtemp(prefix="backproplab-record-"))
        return self._files

    def _file(self, name: str, text: str | None = None, figure: Any = None, arrays: Any = None) -> dict[str, Any]:
        """An artifact written to a local folder first (text, a figure, or arrays as .npz): a file operation."""
        path = self._scratch() / name
        if figure is not None:
            figure.savefig(path)
        elif arrays is not None:
            import numpy as np

            np.savez(path, **arrays)
        else:
            path.write_text(text or "")
        return {"op": "file", "path": str(path)}

    # -- per step --------------------------------------------------------------------------------
    def on_step(self, step: int, loss: float) -> None:
        self._computed += 1  # this process's steps, for its step time (a resumed run's repeated ones too)
        if step <= self._logged_through:  # a resumed run's step again, from a checkpoint before its last log
            signals.check()
            return
        super().on_step(step, loss)
        self._pending.append(("train/loss", self.losses[-1], int(time.time() * 1000), step))
        # a database write costs ~20 ms, a whole tutorial step ~0.5 ms: write in batches, by count or by age
        # (so a long run's curve still shows up live in the UI)
        now = time.perf_counter()
        if self._flushed is None:
            self._flushed = now
        if len(self._pending) >= self.flush_every or now - self._flushed > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """One write for all buffered steps (MLflow allows 1000 metrics per batch)."""
        while self._pending:
            batch = self._pending[:1000]
            # a database's write and its bookkeeping end together: a Ctrl-C right after it must not send it twice
            with interrupts_held() if not self._server else contextlib.nullcontext():
                try:
                    self._write({"op": "metrics", "metrics": batch})
                except KeyboardInterrupt:  # a server's write, cut short or kept
                    if self.spool is not None:  # the batch is in the spool
                        del self._pending[: len(batch)]
                    raise
                del self._pending[: len(batch)]
        self._flushed = time.perf_counter()

    # -- at the end ------------------------------------------------------------------------------
    def finish(self, result: Any, problem: Any) -> None:
        steps = self._computed  # the steps this process trained (a resumed run: those since its restart)
        final = {
            "final_loss": self.losses[-1],
            "time/total_s": time.perf_counter() - self._t0,
            "time/loop_s": result.loop_s,
            "time/step_ms": 1000 * result.loop_s / max(steps, 1),
            "throughput/samples_per_s": problem.x.shape[0] * steps / max(result.loop_s, 1e-12),
            **{f"time/{key}": value for key, value in result.timings.items()},
        }
        now = int(time.time() * 1000)
        # with the last steps' batch, after the model: one write (a database commit each) rather than two. Pending
        # until then, so that a model that fails still leaves them (__exit__ flushes what is pending).
        self._pending.extend((k, float(v), now, 0) for k, v in final.items())
        self._write(self._file("config.yaml", resolved_yaml(self.cfg)))
        # with its interpolations kept (optim.optimizer.lr: ${..lr}), so that +rerun overrides propagate
        self._write(self._file("config_source.yaml", resolved_yaml(self.cfg, resolve=False)))
        if problem.repeats is not None:
            self._write(self._file("repeat_schedule.json", json.dumps(problem.repeats.tolist())))
        self._write(self._file("loss_curve.png", figure=loss_curve(self.steps, self.losses, self.cfg)))
        # the training data as an MLflow dataset input: the UI's Dataset column says what the run trained on
        self._write({"op": "dataset", "name": problem.name, "object": (problem.x, problem.y)})
        self.log_fit(result, problem)
        # The model before the metrics: MLflow links a new model to its run's metrics of step 0 by reading back the
        # history of every metric the run has (500 rows of train/loss, ~30 ms a run); with none written yet it
        # reads none, and the step-0 metrics (the final ones among them) are linked here instead, as they are written.
        # A spooled run's model is logged when scripts/sync.py replays it, without an id here: its metrics go
        # first then, as before, for MLflow to link.
        if self.spool is not None:
            self.flush()
        if model_id := self.log_weights(result, problem):
            self._pending = [(*m, model_id) if m[3] == 0 else m for m in self._pending]  # MLflow's rule: step 0
        self.flush()

    def log_fit(self, result: Any, problem: Any) -> None:
        """A formula model's fit: the formula (tag ``fit.formula``, ``result.txt``, the description's last paragraph),
        ``fit.png`` against the data, and the curves as ``fit.json`` (which the sweep report overlays)."""
        if problem.formula is None:
            return
        text = problem.formula(result.weights)
        log.info("Result: %s", text)
        note = f"{self.note}\n\nResult: {text}"
        self._write({"op": "tags", "tags": {"fit.formula": text, "mlflow.note.content": note}})
        self._write(self._file("result.txt", f"Result: {text}\n"))
        curves = problem.curves(result.weights)
        every = max(1, len(problem.x) // 400)  # enough points for a smooth line, a small file
        fit = {
            "x": problem.x[::every].tolist(),
            "y": problem.y[::every].tolist(),
            "curves": {name: c[::every].tolist() for name, c in curves.items()},
        }
        self._write(self._file("fit.json", json.dumps(fit)))
        self._write(self._file("fit.png", figure=fit_plot(fit, f"{self.run.info.run_name}: {text}")))

    def log(self, metrics: dict[str, float]) -> None:
        """More metrics of the run (its gradients' agreement with the reference, ...)."""
        now = int(time.time() * 1000)
        self._write({"op": "metrics", "metrics": [(k, float(v), now, 0) for k, v in metrics.items()]})

    def log_weights(self, result: Any, problem: Any) -> str | None:
        """The final weights, stored once: in the run's model (tracking.logged_model). Without a model
        (``logger.log_model=false``, or one that could not be logged) they are ``weights.npz``, never lost.
        Returns the model's id (None without a model, or once the run is spooled)."""
        weights = self._file("weights.npz", arrays=result.weights)
        if not self.cfg.logger.get("log_model", True):
            self._write(weights)
            return None
        model = logged_model.operation(result, problem, self.cfg.model, self.experiment_id, Path(weights["path"]))
        try:
            return self._write(model)
        except Exception:
            with contextlib.suppress(Exception):  # the run fails with the model's error, not this one's
                self._write(weights)
            raise

def record_refusal(cfg: DictConfig, error: Exception) -> None:
    """A multirun job whose config was refused still leaves a FAILED child run with the reason, so that the
    sweep's summary, exit code and report count it. Best effort: a broken store is reported elsewhere."""
    if cfg.logger.name != "mlflow" or not is_rank_zero():
        return
    with contextlib.suppress(Exception), MlflowTracker(cfg):
        raise error

def amend_reason(cfg: DictConfig, run_id: str | None, reason: str) -> None:
    """Say on a closed run why it stopped, when that was learnt after it closed (a requeue that was declined)."""
    if cfg.logger.name != "mlflow" or not run_id:
        return
    with contextlib.suppress(Exception):
        client, _ = open_store(cfg.logger)
        send(client.set_tag, run_id, "failure_reason", reason, timeout=float(cfg.logger.get("server_timeout", 60)),
             server=client.tracking_uri.startswith(("http://", "https://")))


def make_tracker(cfg: DictConfig, auto_keys: Sequence[str] = (), resume: str | None = None,
                 step: dict[str, Any] | None = None) -> Recorder:
    """The run's record: MLflow (on rank 0), else the in-memory recorder. ``auto_keys``: the config keys the run
    resolved from ``auto`` itself, whose params say what it chose; ``resume``: a run to go on in (a Slurm job's,
    restarted); ``step``: the code of its step, logged under code/."""
    if cfg.logger.name == "mlflow" and is_rank_zero():
        return MlflowTracker(cfg, auto_keys, resume, step)
    return Recorder(cfg.trainer.get("divergence_factor"), names.run_name(cfg, hydra_overrides()))
