"""The launching side of ``hydra/launcher=slurm``: what each job asks Slurm for, sbatch's refusals in one line, and
the wait for the jobs. Submitting and tracking jobs stays submitit's work; this decides and explains.

- **Requests.** ``nodes``, ``tasks_per_node`` and ``gpus_per_node`` are ``auto`` by default: each job's own trainer
  keys decide them (one node, one task, no GPU for a CPU trainer; a GPU per device with ``accelerator=gpu``; a
  task per device where Slurm starts the ranks, ``strategy=ddp``; one task where Lightning spawns them).
- **Refusals.** sbatch's "Requested node configuration is not available" and its kin become one line that names
  the ``hydra.launcher.*`` key to change, measured against the partition's nodes (``sinfo``).
- **Waiting.** A job is over when its result files are there, or when squeue has called it over (or forgotten
  it) for a while without them: then it is counted as failed, and the sweep names it. sacct is never asked: on a
  cluster without accounting it fails at every call, and submitit then reads every job as UNKNOWN and waits for
  ever on one that died. Ctrl-C (or SIGTERM) cancels the jobs and waits, briefly, for them to close their runs
  as KILLED.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from backproplab.runtime import ConfigError

log = logging.getLogger("backproplab")
AUTO = ("nodes", "tasks_per_node", "gpus_per_node")  # the launcher keys that may be "auto"
# states of a job that is not over (Slurm may still run or restart it); any other state, or none, is over
RUNNING = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
           "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD", "SPECIAL_EXIT", "STOPPED"}
# why a job pends, when it can never start as asked (squeue's %r): a cluster whose EnforcePartLimits is NO (the
# default) takes such a job and keeps it pending; one with ALL refuses it at sbatch, in the same words as below
NEVER = re.compile(r"^(PartitionConfig|PartitionNodeLimit|PartitionTimeLimit|BadConstraints|InvalidAccount|InvalidQOS"
                   r"|(QOS|Assoc)Max\w*PerJob\w*)$")
CANCEL_WAIT_S = 60.0  # after Ctrl-C: how long to wait for the cancelled jobs to close their runs


# -- what a job asks for ------------------------------------------------------------------------------------------
def request(params: dict[str, Any], job: DictConfig) -> dict[str, Any]:
    """The launcher's ``nodes``, ``tasks_per_node`` and ``gpus_per_node`` for one job: as set, or, where
    ``auto``, from the job's trainer keys (a trainer without a key gets its default: one node, one device)."""
    t = job.trainer
    devices = t.get("devices", 1)
    count = devices if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0 else None
    # Lightning starts the ranks itself with ddp_spawn, ddp_fork, ddp_notebook: one Slurm task holds them
    spawn = any(word in str(t.get("strategy") or "") for word in ("spawn", "fork", "notebook"))
    gpu = str(t.get("accelerator")) in ("gpu", "cuda")
    derived = {
        "nodes": t.get("num_nodes", 1),
        "tasks_per_node": 1 if spawn or count == 1 else count,  # Slurm starts the ranks unless Lightning spawns
        "gpus_per_node": count if gpu else None,
    }
    out = {}
    for key in AUTO:
        value = params.get(key, "auto")
        if value == "auto":
            value = derived[key]
            if value is None and not (key == "gpus_per_node" and not gpu):
                raise ConfigError(
                    f"hydra.launcher.{key}=auto needs trainer.devices as a count, not {devices!r}: set "
                    f"trainer.devices=N, or hydra.launcher.{key}=N yourself"
                )
        minimum = 0 if key == "gpus_per_node" else 1  # no GPU is a request; no node or task is not
        count_ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        if not (count_ok or value is None and key == "gpus_per_node"):
            raise ConfigError(f"hydra.launcher.{key}={value!r} is invalid: expected auto or a count >= {minimum}")
        out[key] = value
    return out


def check_warning(params: dict[str, Any]) -> None:
    """Refuse a time-limit warning that would come as each job starts (``signal_delay_s`` not shorter than
    ``timeout_min``): before its run opens, where no trainer could act on it."""
    limit_s, delay_s = params.get("timeout_min"), params.get("signal_delay_s")
    if isinstance(limit_s, int | float) and isinstance(delay_s, int | float) and delay_s >= limit_s * 60:
        raise ConfigError(
            f"hydra.launcher.signal_delay_s={delay_s} is not shorter than hydra.launcher.timeout_min={limit_s} "
            f"({limit_s * 60:g} s): Slurm would send its time-limit warning as each job starts; set "
            f"hydra.launcher.signal_delay_s below {limit_s * 60:g}, or a longer hydra.launcher.timeout_min"
        )


def executor_parameters(params: dict[str, Any], asked: dict[str, Any], base_keys: Sequence[str]) -> dict[str, Any]:
    """The launcher's keys as submitit's executor takes them: its shared keys as they are, the others as
    ``slurm_<key>`` (as Hydra's submitit launcher passes them), with this request's counts."""
    init_keys = ("submitit_folder", "max_num_timeout", "result_grace_s")  # the last is this launcher's own
    merged = {**params, **asked}
    return {k if k in base_keys else f"slurm_{k}": v for k, v in merged.items() if k not in init_keys}


# -- sbatch's refusal, in one line ---------------------------------------------------------------------------
def _sinfo(*args: str) -> list[str]:
    try:
        out = subprocess.run(["sinfo", "-h", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def _gpus(gres: str) -> int:
    """GPUs in a node's GRES (``gpu:4``, ``gpu:a100:4(S:0-1)``, ``(null)``)."""
    total = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def node_limits(partition: str | None) -> list[tuple[int, int, int]]:
    """(CPUs, memory in MB, GPUs) of each node of the partition (of the cluster without one), as sinfo says."""
    nodes = {}
    for line in _sinfo("-N", "-o", "%N|%c|%m|%G", *(["-p", partition] if partition else [])):
        name, cpus, mem, gres = (line.split("|") + ["", "", ""])[:4]
        with contextlib.suppress(ValueError):
            nodes[name] = (int(cpus), int(mem), _gpus(gres))  # a node in several partitions is listed once each
    return list(nodes.values())


def sbatch_said(error: str) -> str:
    """sbatch's reason, from its error output."""
    said = [line for line in error.splitlines() if "error" in line.lower()] or error.splitlines() or ["(no message)"]
    return "sbatch: " + said[-1].split("error:")[-1].replace("Batch job submission failed:", "").strip()


def refusal(why: str, params: dict[str, Any], asked: dict[str, Any]) -> str:
    """Slurm's refusal (``why``: sbatch's words, or squeue's reason for a job that would pend for good) as the one
    line that names the ``hydra.launcher.*`` key to change."""
    low, partition = why.lower(), params.get("partition")
    partitions = sorted({p.rstrip("*") for p in _sinfo("-o", "%P")})
    head = f"Slurm refused the jobs ({why})"
    if "invalid partition" in low or "no partition" in low:
        listing = f"partitions here: {', '.join(partitions) or 'none'}"
        if partition:
            return f"{head}: hydra.launcher.partition={partition} is not a partition of this cluster; {listing}"
        return f"{head}: set hydra.launcher.partition (this cluster has no default partition); {listing}"
    where = f"partition {partition}" if partition else "this cluster"
    limits = node_limits(partition)
    cpus = max((n[0] for n in limits), default=None)
    mem_mb = max((n[1] for n in limits), default=None)
    gpus = max((n[2] for n in limits), default=0)
    merged = {**params, **asked}
    keys = []
    if merged["gpus_per_node"] and merged["gpus_per_node"] > gpus:
        keys.append(f"hydra.launcher.gpus_per_node={merged['gpus_per_node']} (from trainer.devices with "
                    f"trainer.accelerator=gpu, unless you set it) asks for more GPUs than the nodes of {where} have "
                    f"({gpus or 'none'}): use fewer trainer.devices, a GPU partition, or trainer.accelerator=cpu")
    per_node = (merged.get("cpus_per_task") or 1) * merged["tasks_per_node"]
    if cpus is not None and per_node > cpus:
        keys.append(f"hydra.launcher.cpus_per_task={merged.get('cpus_per_task')} x tasks_per_node="
                    f"{merged['tasks_per_node']} asks for {per_node} CPUs per node, and the nodes of {where} have "
                    f"{cpus}: set hydra.launcher.cpus_per_task to at most {max(1, cpus // merged['tasks_per_node'])}")
    if mem_mb is not None and merged.get("mem_gb") and merged["mem_gb"] * 1024 > mem_mb:
        keys.append(f"hydra.launcher.mem_gb={merged['mem_gb']} asks for more memory than the nodes of {where} have "
                    f"({mem_mb} MB): set hydra.launcher.mem_gb to at most {max(1, mem_mb // 1024)}")
    if limits and merged["nodes"] > len(limits):
        keys.append(f"hydra.launcher.nodes={merged['nodes']} (trainer.num_nodes) asks for more nodes than {where} "
                    f"has ({len(limits)})")
    for word, key in (("time", "timeout_min"), ("account", "account"), ("qos", "qos")):
        if word in low:
            keys.append(f"check hydra.launcher.{key}={merged.get(key)}")
    if not keys:
        keys.append("check the hydra.launcher.* keys against your cluster (sinfo; python scripts/train.py -m "
                    "hydra/launcher=slurm --cfg hydra -p hydra.launcher)")
    return f"{head}: " + "; ".join(keys)


@contextlib.contextmanager
def refused_in_one_line(params: dict[str, Any], asked: dict[str, Any]) -> Iterator[None]:
    """Submitting: sbatch's error (which submitit also prints) becomes one ConfigError line."""
    from submitit.core.utils import FailedJobError

    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            yield
    except FailedJobError as e:
        raise ConfigError(refusal(sbatch_said(str(e) or printed.getvalue()), params, asked)) from None


# -- waiting ---------------------------------------------------------------------------------------------------
def has_result(job: Any) -> bool:
    """Every task of the job wrote its result file. Touching the folder first refreshes a network filesystem's
    cache of it, as submitit does."""
    folder = job.paths.folder
    with contextlib.suppress(OSError):
        folder.chmod(folder.stat().st_mode)
    return all(job.task(i).paths.result_pickle.exists() for i in range(job.num_tasks))


def squeue_states(jobs: Sequence[Any]) -> dict[str, tuple[str, str]] | None:
    """(state, reason) of each job squeue still knows, by job id (``123_4``: the jobs of an array one by one), or
    None when squeue did not answer (slurmctld restarting): nothing can be said of any job then."""
    ids = sorted({job.job_id.split("_")[0] for job in jobs})
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r", "-j", ",".join(ids)],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    rows = (line.split("|", 2) for line in out.stdout.splitlines() if line.count("|") >= 2)
    return {job: (state, reason) for job, state, reason in rows}


class Ended:
    """A job that Slurm ended without a result (killed before it could write one, a node lost, out of memory), or
    one that raised outside its run's own handling (its error, the last line of the traceback in its log)."""

    def __init__(self, job: Any, how: str) -> None:
        self.job, self.how = job, how  # "FAILED without a result", "with an error (ValueError: ...)"

    def __str__(self) -> str:
        return f"Slurm job {self.job.job_id} ended {self.how}; its log: {self.job.paths.stderr}"


def outcome(job: Any) -> Any:
    """The job's result (Hydra's JobReturn), or Ended when the job raised outside the run's own handling."""
    from submitit.core.utils import UncompletedJobError

    try:
        return job.results()[0]
    except UncompletedJobError as e:  # FailedJobError: the job's traceback between two rules, then where its log is
        parts = str(e).split("-" * 22 + "\n")
        trace = parts[1] if len(parts) > 2 else str(e)
        last = next((line.strip() for line in reversed(trace.splitlines()) if line.strip()), "no message")
        said = re.sub(r"^[\w.]+\.(?=\w+: )", "", last)  # "submitit.core.utils.UncompletedJobError: ..." -> its name
        return Ended(job, f"with an error ({said[:300]})")


def wait(jobs: Sequence[Any], refused: Callable[[int, str], str], grace_s: float, poll_s: float = 1.0) -> list[Any]:
    """Each job's outcome, in order, once every job is over: its result, or Ended when squeue has called it over
    (or forgotten it) for ``grace_s`` (hydra.launcher.result_grace_s) with no result. squeue is asked at a
    slowing pace, from every 2 s to every 30 s. A job that pends for a reason that never passes cancels them all
    and raises ``refused(index, why)`` as a ConfigError. Job states come from squeue and the result files alone:
    sacct fails on clusters without accounting (submitit would then read every job as UNKNOWN and wait for ever
    on one that died)."""
    outcomes: dict[int, Any] = {}
    over_since: dict[int, float] = {}  # jobs squeue calls over, since when, while their result is not there
    start = asked = time.monotonic()
    while len(outcomes) < len(jobs):
        for i, job in enumerate(jobs):
            if i not in outcomes and has_result(job):
                outcomes[i] = outcome(job)
        now = time.monotonic()
        if len(outcomes) < len(jobs) and now - asked >= min(30.0, max(2.0, (now - start) / 4)):
            asked, states = now, squeue_states([j for i, j in enumerate(jobs) if i not in outcomes])
            for i, job in enumerate(jobs):
                if i in outcomes or states is None:
                    continue
                state, reason = states.get(job.job_id, ("(no longer in squeue)", ""))
                if state == "PENDING" and NEVER.match(reason):
                    cancel(jobs, quiet=True)
                    raise ConfigError(refused(i, f"they would pend for good: squeue's reason {reason}"))
                if state in RUNNING:
                    over_since.pop(i, None)
                elif now - over_since.setdefault(i, now) > grace_s and not has_result(job):
                    outcomes[i] = Ended(job, f"{state} without a result")
        time.sleep(poll_s)
    return [outcomes[i] for i in range(len(jobs))]


def cancel(jobs: Sequence[Any], quiet: bool = False) -> None:
    """scancel the jobs (a whole array at once), then wait, at most ``CANCEL_WAIT_S``, until they are gone: each
    closes its run as KILLED on the SIGTERM that scancel sends. A second Ctrl-C meanwhile is not heard: the jobs
    must be cancelled, and scancel runs in a session of its own, out of the terminal's reach."""
    arrays = sorted({job.job_id.split("_")[0] for job in jobs})
    if not arrays:
        return
    if not quiet:
        print(f"[backproplab] cancelling the sweep's Slurm jobs ({', '.join(arrays)}), which mark their runs KILLED",
              file=sys.stderr, flush=True)
    before = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(["scancel", *arrays], timeout=60, check=False, start_new_session=True)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            states = squeue_states(jobs)
            if states is not None and not {state for state, _ in states.values()} & RUNNING:
                break
            time.sleep(1)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def note_ended(folder: Path, why: str) -> None:
    """A job that ended without a result and never opened its run (no note of one in its output dir): a FAILED
    marker with why, which the sweep's summary counts as it counts logger=none's failed jobs."""
    from backproplab.slurm.job import NOTE

    note = json.loads((folder / NOTE).read_text()) if (folder / NOTE).is_file() else {}
    if not note.get("run_id"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "FAILED").write_text(why + "\n")


# -- the store ---------------------------------------------------------------------------------------------------
def note_local_store(config: DictConfig) -> None:
    """One line when a Slurm sweep records into sqlite: right on one machine or a local disk, not for jobs on many
    nodes writing to one file over a network filesystem."""
    from backproplab.tracking.store import store_location

    if config.logger.name != "mlflow":
        return
    uri, _ = store_location(config.logger)
    if uri.startswith("sqlite:"):
        log.warning(
            "the runs go to %s: sqlite on a network filesystem is not safe for jobs on several nodes writing at once;"
            " a cluster wants a tracking server (logger.tracking_uri=http://<server>:5000, see docs/slurm.md)", uri)
