"""What every part of the benchmark shares: settings, targets, statistics, timed processes and children."""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
TRAIN_SCRIPT = REPO / "scripts" / "train.py"
REFERENCE = Path(__file__).resolve().parent / "reference"
T = TypeVar("T")  # what one side of a comparison returns for a round (rounds)
CHILD_MARK = "BENCH_JSON "  # the line a child process answers on (trainers may print other lines)

HEAVY = ("torch", "tensorflow", "lightning", "pytorch_lightning", "mlflow", "keras", "matplotlib")
NOT_FOR_NUMPY = ("torch", "tensorflow", "lightning", "pytorch_lightning")  # the import target

# trainer -> (its reference loop in benchmarks/reference/, the experiment preset with that example's settings)
PAIRS: dict[str, tuple[str, str]] = {
    "numpy": ("numpy_loop", "numpy"),
    "tensor": ("tensor_loop", "tensor"),
    "autograd": ("autograd_loop", "autograd"),
    "function": ("function_loop", "function"),
    "tensorflow": ("tensorflow_loop", "tensorflow"),
    "lightning": ("optim_loop", "optim"),
}
# the nine experiment presets and the reference loop each one is held against as a process, in tutorial order
NINE: dict[str, str] = {
    "numpy": "numpy_loop",
    "tensor": "tensor_loop",
    "autograd": "autograd_loop",
    "function": "function_loop",
    "tensorflow": "tensorflow_loop",
    "nn": "nn_loop",
    "optim": "optim_loop",
    "module": "module_loop",
    "dynamic": "dynamic_loop",
}
TORCH_TRAINERS = ("tensor", "autograd", "function", "lightning")
TARGETS = {
    "hand_trainer": 1.2,  # hand-written trainer loop / its reference loop (benchmarks/reference/)
    "lightning": 1.3,  # Lightning loop / the reference optim loop
    "hand_script": 1.1,  # hand-written trainer loop / the tutorial's own script's loop, first step to last (issue 35)
    "lightning_script": 1.3,  # Lightning loop / the tutorial's optim script's loop, first step to last (issue 35)
    "mlflow_loop": 1.10,  # loop with logger=mlflow / loop with logger=none
    "mlflow_fixed_later_s": 0.5,  # MLflow's fixed cost of each later run of a sweep, seconds
    "numpy_process": 2.0,  # `train.py trainer=numpy logger=none` / `python benchmarks/reference/numpy_loop.py`
    "tracked_process": 1.6,  # `train.py experiment=optim` (MLflow, an existing store) / the reference optim script
    "sweep": 0.75,  # the nine-experiment sweep / the nine reference processes
    "pct_of_mm": 90.0,  # % of the bare torch.mm rate at the largest size (trainer.threads=auto)
    "under_load": 2.0,  # the default run's loop with a busy process per CPU / the same loop on a quiet machine
    "auto_vs_best": 1.1,  # the default run's loop on trainer.threads=auto / on the best fixed count (quiet)
    "tf2_vs_tensorflow": 1.2,  # tf2's loop / the TF1 graph trainer's loop
    "jax_vs_tensor": 1.0,  # jax's loop (compiled before it) / the tensor trainer's loop
    "peer_process": 0.4,  # tracked `experiment=optim` process / the lightning-hydra-template peer (benchmarks/peer)
    "peer_peak": 1.0,  # that process's peak resident memory / the peer's
    "peer_loop": 0.2,  # its loop / the peer's fit
    "model_later_s": 0.3,  # logging a run's weights and model (log_weights), each later run of a process, seconds
    "model_process_s": 0.3,  # tracked `train.py trainer=numpy` minus the same with logger.log_model=false, seconds
}


class BenchError(RuntimeError):
    """A measured command failed: the benchmark cannot give its number."""


@dataclass(frozen=True)
class Settings:
    """How much to measure. The defaults take a few minutes on 2 cores; QUICK is for CI."""

    steps: int = 500  # training steps of every loop comparison (the tutorial's 500)
    warmup: int = 1  # unmeasured rounds before the measured ones
    repeats: int = 5  # measured rounds per comparison
    mlflow_trainers: tuple[str, ...] = ("numpy", "lightning")  # the fastest loop (worst case) and Lightning
    mlflow_repeats: int = 4
    fixed_plan: tuple[str, ...] = ("numpy", "numpy", "numpy", "optim", "optim", "optim")  # runs, one process
    process_warmup: int = 1  # start-up: unmeasured rounds (the page cache, .pyc files)
    process_repeats: int = 5  # start-up: measured rounds
    import_trainers: tuple[str, ...] = tuple(PAIRS)
    sweep: tuple[str, ...] = tuple(NINE)  # () skips the sweep
    sweep_repeats: int = 1
    sizes: tuple[int, ...] = (256, 1024, 4096)  # scaling: N = D_in = H
    d_out: int = 10
    block_s: float = 1.0  # scaling: aim for this many seconds per measured block
    compile: bool = False  # torch.compile of the Lightning model at the largest size (slow to compile)
    server_runs: int = 16  # team server: runs at once against one mlflow server on PostgreSQL
    server_steps: int = 2000  # team server: steps per run, each recorded
    peer_repeats: int = 5  # the lightning-hydra-template peer against a tracked run: measured rounds (0 skips)
    # threads: the shapes (N, D_in, H, D_out) whose step time is measured on 1..CPUs threads (the tutorial's first)
    thread_shapes: tuple[tuple[int, int, int, int], ...] = (
        (64, 1000, 100, 10), (32, 32, 32, 10), (48, 48, 48, 10), (64, 64, 64, 10), (96, 96, 96, 10),
        (128, 128, 128, 10), (256, 256, 256, 10), (1024, 1024, 1024, 10))


QUICK = Settings(
    steps=20,
    warmup=1,
    repeats=2,
    mlflow_trainers=("numpy",),
    mlflow_repeats=2,
    fixed_plan=("numpy", "numpy"),
    process_warmup=0,
    process_repeats=1,
    import_trainers=("numpy",),
    sweep=(),  # a one-job sweep alone takes ~15 s; the suite has its own sweep tests
    sizes=(64, 128),
    block_s=0.05,
    server_runs=2,
    server_steps=30,
    peer_repeats=0,  # ~25 s a round: make bench measures it, the suite does not
    thread_shapes=((64, 1000, 100, 10), (32, 32, 32, 10)),
)


# -- small helpers ---------------------------------------------------------------------------------------------

def trainer_of(cfg: Any, threads: int | None = None) -> Callable[[Any, Callable[[int, float], None]], Any]:
    """The config's trainer as the run flow calls it (backproplab.spec.bind): ``(problem, on_step) -> Result``.
    ``threads``: the count the trainer computes with (written into the config, as a run's spec does; None: the
    frameworks' own choice). Binding imports the trainer's framework and builds the objects its yaml asks for."""
    from omegaconf import open_dict

    from backproplab.spec import bind

    if threads is not None:
        with open_dict(cfg):
            cfg.trainer.threads = int(threads)
    return bind(cfg)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 and math.isfinite(a) and math.isfinite(b) else float("nan")


def alternate(i: int, a: Any, b: Any) -> tuple[Any, Any]:
    """a then b on even rounds, b then a on odd ones: drift in the machine's load hits both sides."""
    return (a, b) if i % 2 == 0 else (b, a)


def rounds(sides: Mapping[str, Callable[[], T]], warmup: int, repeats: int) -> dict[str, list[T]]:
    """Each side once a round, ``warmup`` unmeasured rounds then ``repeats`` measured ones, the order rotated round
    by round (a b, then b a; a b c, b c a, c a b): drift in the machine's load hits every side alike. Returns
    each side's samples of the measured rounds."""
    samples: dict[str, list[T]] = {k: [] for k in sides}
    keys = list(sides)
    for i in range(warmup + repeats):
        for k in keys[i % len(keys):] + keys[: i % len(keys)]:
            sample = sides[k]()
            if i >= warmup:
                samples[k].append(sample)
    return samples


def load() -> float:
    return round(os.getloadavg()[0], 2)


def compose_cfg(*overrides: str) -> Any:
    """A config composed like scripts/train.py's, through Hydra's compose API. A progress bar (only trainers
    that draw one have the key) is off unless an override asks for it: a bar costs time and clutters a log."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    bar = [o for o in overrides if o.startswith("trainer.progress_bar=")]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[o for o in overrides if o not in bar])
    with open_dict(cfg):
        if "progress_bar" in cfg.trainer:
            cfg.trainer.progress_bar = bool(bar) and bar[-1].endswith("=true")
    return cfg


def time_process(cmd: Sequence[str], cwd: Path | str, timeout: float = 900,
                 env: dict[str, str] | None = None) -> float:
    """Wall time of one process, stdout to /dev/null (the tutorial prints every step)."""
    return _watched(cmd, cwd, timeout, keep_output=False, env=env)[0]


def timed_output(cmd: Sequence[str], cwd: Path | str, timeout: float = 900) -> tuple[float, str]:
    """(wall time in s, stdout and stderr) of one process that must succeed."""
    start = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=child_env())
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(map(str, cmd))} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return wall, proc.stdout + proc.stderr


def measure_process(cmd: Sequence[str], cwd: Path | str, timeout: float = 900) -> tuple[float, float]:
    """(wall time in s, peak resident memory in MiB) of one process, stdout to /dev/null."""
    wall, peak, _ = _watched(cmd, cwd, timeout, keep_output=False)
    return wall, peak


def measured_output(cmd: Sequence[str], cwd: Path | str, timeout: float = 900) -> tuple[float, float, str]:
    """(wall time in s, peak resident memory in MiB, stdout and stderr) of one process that must succeed."""
    return _watched(cmd, cwd, timeout, keep_output=True)


def _watched(cmd: Sequence[str], cwd: Path | str, timeout: float, keep_output: bool,
             env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run one process, watching its peak resident memory: its own VmHWM, read while it runs (rusage would count
    this big parent's memory: the child is forked from it). In a session of its own: past ``timeout``, or this
    benchmark interrupted, its whole process group is killed, so that no worker it started (a joblib sweep's)
    runs on beside the next measurement."""
    start = time.perf_counter()
    peak_kib = 0
    with tempfile.TemporaryFile("w+") as err, tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, stdout=out if keep_output else subprocess.DEVNULL,
                                stderr=err, text=True, env=env or child_env(), start_new_session=True)
        try:
            status = Path(f"/proc/{proc.pid}/status")
            while proc.poll() is None:
                with contextlib.suppress(OSError, ValueError):
                    hwm = [line for line in status.read_text().splitlines() if line.startswith("VmHWM:")]
                    peak_kib = max(peak_kib, int(hwm[0].split()[1])) if hwm else peak_kib
                if time.perf_counter() - start > timeout:
                    raise BenchError(f"{' '.join(map(str, cmd))} ran past {timeout:.0f} s")
                time.sleep(0.01)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        wall = time.perf_counter() - start
        err.seek(0)
        out.seek(0)
        if proc.returncode != 0:
            raise BenchError(f"{' '.join(map(str, cmd))} exited {proc.returncode}: {err.read()[-2000:]}")
        return wall, peak_kib / 1024, out.read() + err.read() if keep_output else ""


def run_child(kind: str, *args: str, cwd: Path | str, timeout: float = 900) -> dict[str, Any]:
    """Run ``python -m benchmarks _child <kind> ...`` and return what it answered (plus its wall time)."""
    cmd = [sys.executable, "-m", "benchmarks", "_child", kind, *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=child_env())
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_MARK)]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"child {kind} {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return {**json.loads(lines[-1][len(CHILD_MARK):]), "process_s": wall}


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """stdout and stderr to /dev/null (a progress bar's output should cost what it costs, not flood the report)."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield


@contextlib.contextmanager
def chdir(path: Path) -> Iterator[None]:
    """contextlib.chdir, which Python 3.10 lacks."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def reference(name: str) -> ModuleType:
    """A reference loop's module (benchmarks/reference/<name>.py), imported the way Python imports a script's
    neighbours: with its folder on sys.path."""
    if str(REFERENCE) not in sys.path:
        sys.path.insert(0, str(REFERENCE))
    return importlib.import_module(name)


def child_env() -> dict[str, str]:
    """The environment of a child process: this one's, with the repository root importable (benchmarks/)."""
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


class StepClock:
    """An on_step that also notes when each step ended: the intervals are steady-state step times, free of the
    trainer's set-up (tensors, a Lightning Trainer) and of the first step's warm-up."""

    def __init__(self) -> None:
        from backproplab.steps import Recorder

        self.recorder = Recorder()
        self.stamps: list[float] = []

    def __call__(self, step: int, loss: float) -> None:
        self.recorder.on_step(step, loss)
        self.stamps.append(time.perf_counter())

    def first_to_last(self) -> float:
        """From the first step's report to the last's: a loop's time without its set-up."""
        return self.stamps[-1] - self.stamps[0] if len(self.stamps) > 1 else float("nan")
