"""The flow of one run: config -> run spec (backproplab.spec) -> open the record -> problem -> trainer -> record.
One way in, one out."""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from backproplab import progress, regions, signals, threads
from backproplab.config import ConfigError
from backproplab.problem import make_problem
from backproplab.runtime import discard_job_dir, hydra_overrides, job_dir, mask_hydra_outputs, mask_logs, sweep_dir
from backproplab.slurm import job as slurm_job
from backproplab.spec import RunSpec, bind, resolve
from backproplab.steps import Diverged, Recorder
from backproplab.tracking import TrackingError, amend_reason, make_tracker, record_refusal, register_run

log = logging.getLogger("backproplab")
EXPECTED = (ConfigError, Diverged, TrackingError)  # one line for the user, no traceback


def main(cfg: DictConfig) -> float:
    """Train once and record it; returns the final loss (what Hydra sweepers minimize).

    A failed single run exits non-zero with one line on stderr. In a multirun a failed job is recorded
    (FAILED in MLflow) and returns +inf (the worst loss; a NaN breaks hydra-optuna-sweeper 1.3 with
    optuna 2.10) so that the other jobs go on; the sweep callback then reports it.
    """
    mask_secrets_of_this_job()
    # signal handlers can only be set from the main thread (not so in a threaded launcher)
    in_main = threading.current_thread() is threading.main_thread()
    restore = signals.install(slurm_job.warning_signal()) if in_main else None
    try:
        return train(cfg)
    except signals.Requeue as e:
        return requeue(cfg, e)
    except KeyboardInterrupt as e:
        return interrupted(e)
    except Exception as e:
        if (interrupt := signals.received()) is not None:  # the interrupt came out of a library as another error
            return interrupted(interrupt)
        if isinstance(e.__context__, signals.Requeue):  # a last write failed after the checkpoint: requeue anyway
            return requeue(cfg, e.__context__)
        in_sweep = sweep_dir() is not None and cfg.get("continue_on_failure", True)
        if not isinstance(e, EXPECTED) and not in_sweep:
            raise  # a bug: Hydra shows it with its traceback
        if isinstance(e, EXPECTED):  # with the tracker's note when the server went away (its spool)
            print("error: " + "; ".join([str(e), *getattr(e, "__notes__", [])]), file=sys.stderr, flush=True)
        else:
            log.exception("job failed (recorded as FAILED; the sweep goes on)")
        if in_sweep:
            if isinstance(e, ConfigError):  # refused before its run opened: record it, so the sweep counts it
                record_refusal(cfg, e)
            return float("inf")
        if isinstance(e, ConfigError):  # refused before anything ran: no output folder is left behind
            discard_job_dir()
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    finally:
        if restore is not None:
            restore()
        if sweep_dir():
            settle_heap()


_modules_frozen = 0  # how many modules were loaded when settle_heap last froze the heap
LIBRARY_IMPORT = 20  # more new modules than this: a library was imported (MLflow's models-from-code adds 2 a job)


def settle_heap() -> None:
    """After a sweep job that imported a library (the first job, or one that checked its gradients: torch), its
    garbage is collected and what survives frozen (``gc.freeze``): a worker that runs job after job then never
    scans MLflow's, Hydra's, matplotlib's and torch's objects again. joblib's workers collect after every job, and
    that full scan cost ~0.27 s a job, half a numpy run's loop (measured: gc.collect after each job of a sweep).
    Only then: a frozen object that later becomes garbage is never collected, so the other jobs freeze nothing
    (their config, say, stays collectable)."""
    global _modules_frozen
    if len(sys.modules) > _modules_frozen + LIBRARY_IMPORT:
        gc.collect()
        gc.freeze()
        _modules_frozen = len(sys.modules)


def mask_secrets_of_this_job() -> None:
    """Credentials in a tracking URI never reach a log line or Hydra's own files."""
    mask_logs()
    if folder := job_dir():
        mask_hydra_outputs(folder, *([sweep_dir()] if sweep_dir() else []))


def interrupted(e: KeyboardInterrupt) -> float:
    """Ctrl-C (exit 130) or SIGTERM (143): one line, the run already marked KILLED by its record.

    A Slurm job that is cancelled or meets its time limit returns instead, as a failed job does (+inf): its result
    reaches the launcher, and the sweep goes on and names the KILLED run. One that Slurm is requeueing exits with no
    result: the launcher waits for the restarted job, which resumes into the run."""
    code = 143 if isinstance(e, signals.Terminated) else 130
    if notes := getattr(e, "__notes__", None):  # the server was away: the record is in the spool
        print(f"interrupted: run marked KILLED (exit {code}); {notes[0]}", file=sys.stderr)
    else:
        print(f"interrupted: metrics so far are recorded, run marked KILLED (exit {code})", file=sys.stderr)
    if slurm_job.active() and sweep_dir() and not slurm_job.being_requeued():
        return float("inf")
    sys.exit(code)


def requeue(cfg: DictConfig, e: signals.Requeue) -> float:
    """The time-limit warning, acted on: the checkpoint is saved and the run closed; submitit requeues the job
    (and exits this process), unless it will not (too many time-outs): then the run stays KILLED, and says why."""
    try:
        signals.hand_over()
    except Exception as refused:  # submitit's UncompletedJobError, with its reason
        reason = f"not requeued: {refused}"
        print(f"error: Slurm's time-limit warning: the job was {reason}", file=sys.stderr, flush=True)
        amend_reason(cfg, e.run_id, f"{signals.describe(e, True)}; but {reason}")
    return float("inf")


def train(cfg: DictConfig, opened: Callable[[Recorder], None] | None = None) -> float:
    """Resolve the run spec, open the record, train, record; returns the final loss. ``opened`` is handed the
    record once it is open (``backproplab.train`` reads the run from it, whatever happens next)."""
    run = resolve(cfg, hydra_overrides())  # validated once; from here on read, never written
    resumed = run.resumed  # Slurm restarted this job: it goes on in the run it started
    if resumed and resumed.get("finished"):  # restarted after its run had ended FINISHED: nothing to do again
        log.info("this Slurm job's run %s had FINISHED before the restart", resumed["run_id"])
        return float(resumed["final_loss"])
    c = run.config
    # opened before the heavy imports: a bad store fails in seconds
    with make_tracker(c, list(run.auto_keys), resume=resumed and resumed["run_id"], step=step_of(run)) as rec:
        slurm_job.note_run(job_dir(), rec.run_id, run.threads, list(run.auto_keys))
        if opened is not None:
            opened(rec)
        trainer = bind(run)  # the trainer's own imports (torch, TF, ...) happen here
        threads.use(run.threads)  # in every framework those imports loaded
        problem = make_problem(c)
        t0 = time.perf_counter()
        with progress.bar(c, rec.on_step) as bar:  # the progress line, in a terminal: drawn from the step hook
            result = trainer(problem, bar.on_step)
            bar.finish(result.loop_s)
        rec.finish(result, problem)
        if rec.run_id and sweep_dir() and (agreement := gradient_agreement(c, rec)) is not None:  # the lesson's
            rec.log({"verify/grad_rel_diff": agreement})
        final = rec.losses[-1]
        log.info(  # before the record closes: its last line is the run page's address
            "%s: %d steps, loss %.4g -> %.4g in %.2fs (loop %.3fs, %d CPU thread%s)%s",
            rec.name, len(rec.losses), rec.losses[0], final, time.perf_counter() - t0, result.loop_s,
            run.threads, "s" if run.threads > 1 else "", f", mlflow run {rec.run_id}" if rec.run_id else "",
        )
    slurm_job.note_finished(job_dir(), final)
    if rec.run_id and c.logger.get("register") and sweep_dir() is None:  # a sweep registers its best job's
        register_run(c, rec.run_id)
    return final


def step_of(run: RunSpec) -> dict:
    """The code of the run's step (its trainer's ``supports.lesson`` regions, backproplab.regions) and of the
    files it reaches, with the first line of the trainer's docstring: what the record logs under code/."""
    c = run.config
    chosen = regions.picks(run.trainer.lesson, c.model.name)
    module = regions.module_file(run.trainer.module)
    sources = regions.read([module, *(file for file, _ in chosen)])
    try:
        step = regions.step_code(sources, chosen)
    except KeyError as e:  # a trainer whose step is not marked: its files are logged all the same
        log.warning("the lesson page will not show this run's step: %s", e)
        step = []
    about = regions.summary(sources[module])
    return {"trainer": c.trainer.name, "model": c.model.name, "optim": c.optim.name, "about": about,
            "files": list(sources), "regions": step}


def gradient_agreement(cfg: DictConfig, rec: Any) -> float | None:
    """How far the trainer's first-step gradients are from the reference's, as verify measures it (float64,
    this run's problem): once per group of a sweep (its runs that differ only in ``seed``), by the job of the
    group's first seed; the lesson page reads it from that run. None in the group's other jobs."""
    if not checks_its_group(cfg, rec):
        return None  # and no torch import, no autograd training: a numpy job stays numpy's
    from backproplab.agreement import first_step_agreement

    try:
        return first_step_agreement(cfg)
    except Exception as e:  # the page then shows none; the run itself is not at stake
        log.warning("no gradient agreement for the lesson page: %s", str(e).splitlines()[0] if str(e) else e)
        return None


def checks_its_group(cfg: DictConfig, rec: Any) -> bool:
    """Whether this sweep job computes its group's gradient check: its seed is the first the sweep asked for
    (tracking.groups.asked_seeds, from the parent run's overrides and the sweeper's params), or the sweep does not
    sweep ``seed`` (each job is then its own group). Where the sweep cannot be read (another sweeper, no parent
    run, the server away) every job checks: a check too many, never a group without one."""
    from hydra.core.hydra_config import HydraConfig

    from backproplab.tracking.groups import asked_seeds
    from backproplab.tracking.store import find_parent_run
    from backproplab.tracking.sweep import is_basic

    hydra = HydraConfig.get()
    if not is_basic(hydra.sweeper) or rec.spool is not None:  # Optuna's trials: no seed groups
        return True
    try:
        # the parent the record found as it opened; its tags (the sweep's overrides) are written before any job
        parent = rec.parent or find_parent_run(rec.client, rec.experiment_id, sweep_dir())
        if parent is None:
            raise LookupError("the sweep's parent run is not found")
        seeds = asked_seeds(parent.data.tags.get("overrides"), hydra.sweeper.get("params"))
    except Exception as e:
        log.warning("the sweep's seeds are unknown, so this job checks its gradients: %s", e)
        return True
    return not seeds or len(seeds) < 2 or int(cfg.seed) == seeds[0]
