"""Hydra callback for multiruns: one MLflow parent run per sweep, created before any job starts.

Creating the store, the experiment and the parent run in the launching process also means that
parallel jobs (joblib, submitit) never race to create a fresh sqlite database. Jobs find their parent by
the sweep dir tag (tracking.store.find_parent_run), which works in any process and on any node.
"""

from __future__ import annotations

import atexit
import math
import re
import sys
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from backproplab.threads import usable_cpus  # the allocation whole: crowding weighs a sweep's jobs against it

_stopped_because: str | None = None  # why the sweep stopped before its jobs had run, when the launcher said


def note_stop(reason: str) -> None:
    """Why the sweep stopped early (a launcher's refusal): the parent run's failure reason, when it is closed."""
    global _stopped_because
    _stopped_because = reason


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
# sweepers that run every combination of their params and the command line's sweeps, as Hydra's basic one does
BASIC_SWEEPERS = (BASIC_SWEEPER, "hydra_plugins.backproplab_sweeper.sweeper.BackproplabSweeper")


def is_basic(sweeper: DictConfig | dict) -> bool:
    """Whether a sweeper (``hydra.sweeper``) runs the basic sweeper's grid, rather than trials (Optuna's)."""
    return sweeper.get("_target_") in BASIC_SWEEPERS


class Parsed(NamedTuple):
    """A sweep's overrides, parsed once: what swept_keys and the job count both read."""

    keys: tuple[str, ...]  # swept_keys: the typed sweeps in order, then the sweeper's params not among them
    sizes: tuple[tuple[str, int | None], ...]  # (key, its number of values; None: not listable), later wins


@lru_cache(maxsize=64)  # a pure function of its strings: a sweep's callbacks and jobs ask again with the same ones
def _parse(params: tuple[tuple[str, str], ...], typed: tuple[str, ...]) -> Parsed:
    """The sweeper's params (``(key, value)``) and the overrides as typed, through Hydra's parser in one call."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    typed_parsed = parser.parse_overrides(list(typed))
    keys = [o.key_or_group for o in typed_parsed if o.is_sweep_override()]
    counts: dict[str, int | None] = {}
    try:
        parsed = parser.parse_overrides([f"{k}={v}" for k, v in params]) + typed_parsed
    except Exception:  # a sweeper whose params are not in Hydra's override grammar (Ax's, Nevergrad's dicts)
        counts, parsed = dict.fromkeys((k for k, _ in params), None), typed_parsed
    for o in parsed:
        if not o.is_sweep_override():  # later wins, as in the basic sweeper
            counts.pop(o.key_or_group, None)
            continue
        try:
            counts[o.key_or_group] = len(list(o.sweep_string_iterator())) if o.is_discrete_sweep() else None
        except Exception:  # a glob: its values need the config repository
            counts[o.key_or_group] = None
    return Parsed(tuple(keys + [k for k, _ in params if k not in keys]), tuple(counts.items()))


def _parsed(sweeper: DictConfig, typed: Sequence[Any]) -> Parsed:
    """_parse of a sweeper's config and a sweep's overrides (as typed: Hydra has parsed them already)."""
    params = tuple((str(k), f"{v}") for k, v in (sweeper.get("params") or {}).items())
    return _parse(params, tuple(str(o) for o in typed))


def swept_keys(config: DictConfig) -> list[str]:
    """The keys a multirun varies: its sweep overrides (``optim=sgd,adam``, ``optim.lr=range(...)``) and the
    sweeper's own search space (``hydra.sweeper.params``, e.g. Optuna's)."""
    return list(_parsed(config.hydra.sweeper, config.hydra.overrides.task).keys)


def _count(sweeper: DictConfig, typed: Sequence[Any]) -> tuple[set[str], int | None]:
    """The keys a sweep varies and its number of jobs, from its sweeper's config and its overrides as typed."""
    counts = dict(_parsed(sweeper, typed).sizes)
    if not is_basic(sweeper):
        return {*counts}, sweeper.get("n_trials")
    sizes = [n for n in counts.values() if n is not None]
    return {*counts}, math.prod(sizes) if counts and len(sizes) == len(counts) else None


@lru_cache(maxsize=64)  # keyed by the file's text, not its dir: another sweep's differs, a stale count cannot be
def _typed(saved: str) -> tuple[str, ...]:
    """The command line's overrides that a multirun.yaml's text holds."""
    from omegaconf import OmegaConf

    try:  # a sweeper that saves none (Optuna's), or a node that cannot see it: the sweeper's params alone
        return tuple(str(o) for o in OmegaConf.create(saved).hydra.overrides.task)
    except Exception:
        return ()


def sweep_size(job: DictConfig) -> tuple[set[str], int | None]:
    """From a sweep job's config: the keys its sweep varies, and how many jobs it has where that can be known.
    Hydra's basic sweeper runs every combination of its sweeper params and the command line's sweeps (read back
    from the multirun.yaml it saves before any job starts), so the count is the product of their lengths; a
    sweeper with a trial budget (Optuna's ``n_trials``) runs that many; an interval or a glob leaves it unknown.
    Called by every job: reading the file costs microseconds, parsing it ~20 ms, so the parse is cached on the
    file's text (a later job of the sweep in this process, a joblib worker's next job, costs the read alone)."""
    try:
        saved = (Path(str(job.hydra.sweep.dir)) / "multirun.yaml").read_text(encoding="utf-8")
    except (OSError, ValueError):
        saved = ""
    return _count(job.hydra.sweeper, _typed(saved))


def crowding(config: DictConfig) -> str | None:
    """One line when a joblib sweep asks for more jobs at a time than there are CPUs (``hydra.launcher.n_jobs=4``
    on 2 CPUs), else None. The jobs then share the CPUs: each runs slower, the sweep as a whole no faster, and the
    first result comes late (on 2 CPUs, 8 jobs at n_jobs=4 took 54.6 s, 27 s of them before the first result; 6
    jobs one after another took 17.8 s). joblib's default, ``n_jobs=-1``, runs one job per CPU, and
    trainer.threads=auto shares the CPUs between the jobs. Said, not refused: the sweep goes on."""
    launcher = config.hydra.get("launcher") or {}
    if "joblib" not in str(launcher.get("_target_", "")):
        return None
    try:
        asked = int(launcher.get("n_jobs") or 1)
    except (TypeError, ValueError):
        return None
    cpus = usable_cpus()
    if asked <= cpus:  # n_jobs=-1 (all CPUs), -2 (all but one), ...: never more than the CPUs
        return None
    at_once = asked
    try:
        sweeper = config.hydra.sweeper
        total = _count(sweeper, config.hydra.overrides.task)[1]
        batch = None if is_basic(sweeper) else sweeper.get("n_jobs")  # Optuna's batch
        at_once = min(n for n in (asked, total, batch) if isinstance(n, int) and n > 0)
    except Exception:  # the count is a refinement: without it, the launcher's figure
        pass
    if at_once <= cpus:  # fewer jobs than n_jobs: no more processes than CPUs
        return None
    return (f"[backproplab] warning: hydra.launcher.n_jobs={asked} runs {at_once} jobs at a time on {cpus} CPU"
            f"{'s' if cpus > 1 else ''}: they share them, so each job and the sweep run slower; "
            f"hydra.launcher.n_jobs=-1 (joblib's default) runs one per CPU")


def rename_children(client: Any, children: list[Any], swept: list[str]) -> dict[str, str]:
    """Give the sweep's runs their names made together (names.sweep_run_names): each job named itself alone, and
    two floats that round alike (lr=1.15e-05 for 1.1498e-05 and 1.1502e-05) get the digits that tell them apart.
    A run whose name its config does not start (named some other way) keeps it. Returns {run id: new name}."""
    from backproplab.tracking import names
    from backproplab.tracking.store import retry_locked

    made, runs = [], []
    for run in children:
        tags = run.data.tags
        if not all(k in tags for k in ("trainer", "model", "optim", "overrides")):
            continue
        base, in_base = names.base_name(tags.get("preset"), tags["trainer"], tags["model"], tags["optim"])
        if run.info.run_name != base and not run.info.run_name.startswith(base + " "):
            continue
        made.append((base, in_base, dict(names.split_override(o) for o in overrides_of(tags["overrides"]))))
        runs.append(run)
    renamed = {}
    for run, name in zip(runs, names.sweep_run_names(made, swept), strict=True):
        if name != run.info.run_name:
            retry_locked(client.update_run, run.info.run_id, name=name)
            renamed[run.info.run_id] = name
    return renamed


def overrides_of(tag: str) -> list[str]:
    """A run's ``overrides`` tag (its overrides joined by spaces) back into overrides: a word that does not start
    ``key=`` belongs to the value before it (``data.formula=sin(x) + 1``)."""
    out: list[str] = []
    for word in tag.split(" "):
        if out and not re.match(r"^[+~]*[\w.@/-]+=", word):
            out[-1] += " " + word
        elif word:
            out.append(word)
    return out


def compose_first_job(config: DictConfig) -> None:
    """Compose the sweep's first job as the launcher will, so that an override of a key that does not exist
    (``-m nosuchkey=1,2``) is refused before the parent run exists, not by the first job after it. Best effort:
    a sweep whose first values cannot be listed (Optuna's intervals) is left to Hydra."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    first = []
    for o in OverridesParser.create().parse_overrides(list(config.hydra.overrides.task)):
        if not o.is_sweep_override():
            first.append(o.input_line)
            continue
        try:
            first.append(f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}")
        except Exception:
            return
    from hydra.errors import CompactHydraException

    from backproplab.suggest import composition_error

    try:
        GlobalHydra.instance().config_loader().load_sweep_config(config, first)
    except CompactHydraException as e:  # Hydra turns a callback's exception into a warning: exit here
        print(composition_error(e), file=sys.stderr, flush=True)
        sys.exit(2)


def tag_groups(found: list[Any], uri: str) -> None:
    """Every child run gets its group's label (``backproplab.group``), so that MLflow's UI can "Group by" it."""
    from mlflow.tracking import MlflowClient

    from backproplab.tracking.store import GROUP_TAG, retry_locked

    client = MlflowClient(uri)
    for g in found:
        for r in g.runs:
            retry_locked(client.set_tag, r.run.info.run_id, GROUP_TAG, g.label)


class MlflowSweepCallback(Callback):
    def _client(self, config: DictConfig) -> tuple[Any, str]:
        from backproplab.tracking.store import open_store

        return open_store(config.logger)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from backproplab.runtime import mask_logs
        from backproplab.threads import settle_sweep

        mask_logs()  # the launcher logs every job's overrides, a tracking URI's credentials included
        compose_first_job(config)
        if line := crowding(config):  # once per sweep, before any job starts
            print(line, file=sys.stderr, flush=True)
        settle_sweep(config.hydra.sweep.dir)  # trainer.threads=auto: one idle-CPU figure for all the sweep's jobs
        if config.logger.name != "mlflow":
            return
        from backproplab.runtime import mask_secrets
        from backproplab.tracking import names
        from backproplab.tracking.store import SWEEP_TAG, SWEPT_TAG, TrackingError, retry_locked

        sweep = str(Path(config.hydra.sweep.dir).resolve())
        overrides = [mask_secrets(o) for o in config.hydra.overrides.task]
        tags = {
            SWEEP_TAG: sweep,
            SWEPT_TAG: " ".join(swept_keys(config)),
            "overrides": " ".join(overrides),
            "mlflow.note.content": names.command(overrides, multirun=True),
        }
        try:
            client, exp_id = self._client(config)
            run = retry_locked(client.create_run, exp_id,
                               run_name=names.sweep_name(overrides, f"sweep {Path(sweep).name}"), tags=tags)
        except Exception as e:  # Hydra turns a callback's exception into a warning, and the jobs would train
            # unparented: stop the sweep here, before any job, with one line (SystemExit is not an Exception)
            reason = str(e) if isinstance(e, TrackingError) else f"cannot open the sweep's parent run: {e}"
            print(f"error: {reason.strip().splitlines()[0] if reason.strip() else type(e).__name__}; no job ran",
                  file=sys.stderr, flush=True)
            sys.exit(2)
        self.parent_id, self.exp_id = run.info.run_id, exp_id
        self.ended = False
        # A job that exits the process (continue_on_failure=false, Ctrl-C) skips on_multirun_end:
        # close the parent anyway so that it does not stay RUNNING.
        atexit.register(self._close_unended, client)
        print(f"[backproplab] MLflow parent run {self.parent_id} for sweep {sweep}", flush=True)

    def _report(self, uri: str, config: DictConfig) -> None:
        """The comparison report (curves + table) and the lesson page (each run's code beside its curve), in the
        sweep dir and on the parent run."""
        from backproplab.tracking import names
        from backproplab.tracking.lesson import NAME, make_lesson
        from backproplab.tracking.report import make_report
        from backproplab.tracking.store import chosen_uri

        out = Path(config.hydra.sweep.dir) / "report"
        found = None
        try:
            result = make_report(uri, config.logger.experiment_name, self.parent_id, out)
            found = result.groups
            print(f"[backproplab] report: {out}/report.md", flush=True)
            for line in result.verdicts():
                print(f"[backproplab] {line}", flush=True)
            tag_groups(result.groups, uri)
        except Exception as e:  # a report problem must not change the sweep's outcome
            print(f"[backproplab] report skipped: {e}", flush=True)
        try:
            path = make_lesson(uri, self.parent_id, out, found=found)
            page = names.run_page(uri, self.exp_id, self.parent_id, chosen_uri(config.logger) is None, NAME)
            print(f"[backproplab] lesson: {page}; the file: {path.resolve()}", flush=True)
        except Exception as e:
            print(f"[backproplab] lesson skipped: {e}", flush=True)

    def _close_unended(self, client: Any) -> None:
        if not self.ended:
            self._children(client)  # a launcher that died with a killed job leaves that job's run RUNNING
            reason = _stopped_because or (
                "the sweep stopped before all its jobs had run (continue_on_failure=false, Ctrl-C, SIGTERM, or a job"
                " process killed under a parallel launcher)"
            )
            client.set_tag(self.parent_id, "failure_reason", reason)
            client.set_terminated(self.parent_id, "FAILED")

    def _children(self, client: Any) -> list[tuple[Any, str, str]]:
        """The sweep's runs as (run, status, failure reason). A run still RUNNING is one whose job process
        died without closing it (killed, out of memory): it is closed FAILED with that reason."""
        from backproplab.tracking.report import search_all
        from backproplab.tracking.store import PARENT_TAG

        children = search_all(client, [self.exp_id], f"tags.`{PARENT_TAG}` = '{self.parent_id}'", [])
        closed = []
        for run in children:
            status, reason = run.info.status, run.data.tags.get("failure_reason", "")
            if status == "RUNNING":
                status, reason = "FAILED", "the job ended without closing its run (its process was killed or died)"
                client.set_tag(run.info.run_id, "failure_reason", reason)
                client.set_terminated(run.info.run_id, status)
            closed.append((run, status, reason))
        return closed

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A sweep job says which it is, of how many: ``[backproplab] job 3/15: optim=adam seed=2`` (its swept
        values; the count where the sweep's values can be listed). Hydra calls this for a single run too: silent."""
        from hydra.types import RunMode

        if config.hydra.mode != RunMode.MULTIRUN:
            return
        from backproplab.runtime import mask_secrets

        try:  # cached in the module, not here: a joblib worker gets a fresh copy of this callback for each job
            swept, total = sweep_size(config)
        except Exception:  # a line to say which job this is must never fail the job
            swept, total = set(), None
        ours = [o for o in config.hydra.overrides.task if o.partition("=")[0].lstrip("+~") in swept]
        of = f"/{total}" if total else ""
        shown = " ".join(mask_secrets(o) for o in ours or config.hydra.overrides.task)
        print(f"[backproplab] job {config.hydra.job.num + 1}{of}" + (f": {shown}" if shown else ""), flush=True)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        """With logger=none there is no record to count failures from: a failed job (run.main returns +inf)
        leaves a FAILED marker in its output dir, read back by on_multirun_end."""
        from hydra.core.utils import JobStatus

        failed = job_return.status == JobStatus.FAILED or job_return.return_value == float("inf")
        if config.logger.name == "none" and failed:
            (Path(config.hydra.runtime.output_dir) / "FAILED").touch()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from backproplab.runtime import mask_hydra_outputs, mask_secrets
        from backproplab.tracking.logged_model import register

        mask_hydra_outputs(config.hydra.sweep.dir)
        if config.logger.name == "none":
            failed = len(list(Path(config.hydra.sweep.dir).glob("*/FAILED")))
            print(f"[backproplab] sweep done: {failed} failed (logger=none: no record)", flush=True)
            if failed and config.get("fail_sweep_on_job_failure", True):
                sys.exit(1)
        if config.logger.name != "mlflow" or not hasattr(self, "parent_id"):
            return
        self.ended = True
        client, _ = self._client(config)
        counts: dict[str, int] = {}
        children = self._children(client)
        try:  # names that read apart, before the summary, the report and its legend name the runs
            renamed = rename_children(client, [run for run, _, _ in children], swept_keys(config))
        except Exception as e:  # a name is cosmetic: the sweep's outcome stands
            renamed = {}
            print(f"[backproplab] the runs keep their names: {e}", flush=True)
        for run, status, reason in children:
            counts[status] = counts.get(status, 0) + 1
            if status != "FINISHED":  # job logs may be in files (submitit, joblib): say why here
                name = renamed.get(run.info.run_id, run.info.run_name)
                print(f"[backproplab] {status} {name} ({run.info.run_id[:8]}): {reason}", flush=True)
        for marker in sorted(Path(config.hydra.sweep.dir).glob("*/FAILED")):  # a job that died before its run
            counts["FAILED"] = counts.get("FAILED", 0) + 1
            print(f"[backproplab] FAILED job {marker.parent.name}: {marker.read_text().strip()}", flush=True)
        failed = counts.get("FAILED", 0) + counts.get("KILLED", 0)
        fail_sweep = bool(failed) and config.get("fail_sweep_on_job_failure", True)
        client.set_terminated(self.parent_id, "FAILED" if fail_sweep else "FINISHED")
        summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        print(f"[backproplab] sweep done: {summary or 'no runs'} (parent run {self.parent_id})", flush=True)
        if name := config.logger.get("register"):  # the best child's model, in MLflow's Model Registry
            try:
                print(f"[backproplab] {register(client, name, [run for run, _, _ in children], self.parent_id)}",
                      flush=True)
            except Exception as e:  # the sweep's outcome stands; the line says what failed
                print(f"[backproplab] logger.register={name}: registering failed: {mask_secrets(str(e))}", flush=True)
        self._report(client.tracking_uri, config)
        if fail_sweep:
            sys.exit(1)
