"""Everything a GPU can show, in one run within a time budget (default 280 s): `make gpu-check`.

    python3 scripts/gpu_check.py [--budget 280] [--out gpu-check.md]

Offline, from the source tree, with the node's own CUDA torch; installs nothing. Rows: the device; bf16 / fp32 /
TF32 matmul peaks and the tutorial's training step at 8192 as a share of them; each GPU-capable trainer through
the real CLI (500 steps, fp32, logger=none), the dynamic net and bf16-mixed on Lightning; pytest -m gpu.
Prints one Markdown table at the end (also written to --out) and exits 1 if any row FAILED. Without CUDA or
torch it prints one line and exits 0. The module level is standard library only: torch is imported inside
functions, hydra / mlflow / TensorFlow only by the subprocesses, so a missing one is a skipped row.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import importlib.util
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
ACCELERATOR = "trainer.accelerator=gpu"
STEPS = 500
RUN_TIMEOUT_S = 90.0  # one training process: imports (~5 s), CUDA init, 500 small steps
PYTEST_TIMEOUT_S = 150.0
MIN_PROCESS_S = 20.0  # a process started with less left than this would only time out
BENCH_ROW_S = 10.0  # the six benchmark rows take ~10 s together on an H100
BENCH_N = 8192
TARGET_PCT = 50.0  # the training step against the same precision's matmul peak
# run.py's summary line, "<run name>: <steps> steps, loss <first> -> <final> in <s>s (loop <s>s, <n> CPU threads)",
# the run name being the run's MLflow name, with logger=none too (tracking/names.run_name: an experiment preset's
# name, else trainer-model-optim; in a sweep with the swept values, which may hold spaces): e.g. "numpy: 500 steps,
# loss 3.7e+07 -> 2.1e-07 in 0.41s (loop 0.281s, 2 CPU threads)". A tracked run's next line is
# "FINISHED run <run name>: <url>"; the last summary line is read, whatever the name before it.
LOSS_LINE = re.compile(r": (\d+) steps, loss (\S+) -> (\S+) in [\d.]+s \(loop ([\d.]+)s[,)]")
NO_MODULE = re.compile(r"No module named '([\w.]+)'")
PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)\b")


@dataclass
class Row:
    name: str
    status: str  # ok | FAILED | skipped
    seconds: float
    detail: str


class Check:
    """Runs the rows in order within the budget, prints each as it finishes, keeps them for the table."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        self.rows: list[Row] = []

    def timeout(self, cap: float) -> float:
        """A subprocess's timeout: at most `cap`, and it must end before the budget does."""
        return min(cap, self.deadline - time.monotonic() - 5)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(f"gpu-check: [{row.status}] {row.name} ({row.seconds:.1f} s) {row.detail}", flush=True)

    def run(self, name: str, fn: Callable[[], tuple[str, str]], need: float = 0.0) -> None:
        if (left := self.deadline - time.monotonic()) < need:
            self.add(Row(name, "skipped", 0.0, f"budget: {max(left, 0):.0f} s left, needs ~{need:.0f} s"))
            return
        t0 = time.monotonic()
        try:
            status, detail = fn()
        except Exception as e:  # this row FAILED with its reason; the others still run
            status, detail = "FAILED", f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        self.add(Row(name, status, time.monotonic() - t0, detail))


def format_table(rows: list[Row]) -> str:
    """The rows as one Markdown table (a `|` or a newline in a detail would break it)."""
    lines = ["| check | status | s | detail |", "|---|---|---:|---|"]
    for r in rows:
        detail = r.detail.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r.name} | {r.status} | {r.seconds:.1f} | {detail} |")
    return "\n".join(lines)


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that fails to import
        return False


def version_of(dist: str, module: str) -> str:
    try:
        return importlib.metadata.version(dist) if has_module(module) else "not installed"
    except importlib.metadata.PackageNotFoundError:
        return "present"  # on PYTHONPATH without package metadata


def missing_module(text: str) -> str | None:
    """The first module that `text` says could not be imported and that really is absent here."""
    for name in NO_MODULE.findall(text):
        if not has_module(name.split(".")[0]):
            return name.split(".")[0]
    return None


def last_line(*texts: str) -> str:
    """The last non-empty line of the first text that has one."""
    for text in texts:
        if text.strip():
            return text.strip().splitlines()[-1].strip()[:300]
    return "(no output)"


def run_process(cmd: list[str], cwd: Path, timeout: float, **env_extra: str) -> tuple[int | None, str, str]:
    """(exit code, or None on timeout; stdout; stderr) of cmd run with <repo>/src on PYTHONPATH.

    It runs in its own process group, killed whole on timeout or Ctrl-C: the processes it started itself
    (pytest's CLI runs) must not go on holding the GPU.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=max(timeout, 1.0))
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


# -- the device and the benchmark, in this process ---------------------------------------------------------

def device_info() -> tuple[str, str]:
    import torch

    p = torch.cuda.get_device_properties(0)
    count = torch.cuda.device_count()
    return "ok", (
        f"{p.name}{f' (x{count})' if count > 1 else ''}, {p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor}; "
        f"torch {torch.__version__} (CUDA {torch.version.cuda}), lightning {version_of('lightning', 'lightning')}, "
        f"python {platform.python_version()}; hydra-core {version_of('hydra-core', 'hydra')}, "
        f"mlflow {version_of('mlflow', 'mlflow')}, {tensorflow_build()}"
    )


def tensorflow_build() -> str:
    """Which TensorFlow: the GPU-capable wheel ([tf-gpu]) or tensorflow-cpu ([tf]), which never sees a GPU."""
    if has_module("tensorflow"):
        for dist in ("tensorflow", "tensorflow-cpu"):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                return f"{dist} {importlib.metadata.version(dist)}"
    return f"tensorflow {version_of('tensorflow', 'tensorflow')}"


def cuda_seconds(fn: Callable[[], Any], rounds: int = 3, round_s: float = 0.2) -> float:
    """Seconds per call of fn: the best of `rounds` CUDA-event-timed rounds, after a warm-up.

    A round makes as many calls as take ~round_s, so launch latency does not count on a fast GPU and a slow
    one still finishes in seconds. Best-of for the peak and the step alike, so that their ratio is fair.
    """
    import torch

    for _ in range(3):  # cuBLAS handles and heuristics, the caching allocator
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    calls = max(3, min(200, int(round_s / max(time.perf_counter() - t0, 1e-6))))
    best = float("inf")
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3 / calls)
    return best


def step_flops(n: int, d_in: int, h: int, d_out: int) -> int:
    """FLOPs of one training step of Linear(d_in, h)-ReLU-Linear(h, d_out) on a batch of n.

    A GEMM (m x k) @ (k x p) costs 2*m*k*p. Forward: x @ W1 and relu(.) @ W2. Backward: layer 2 needs dL/dh
    (to go on) and dL/dW2, layer 1 only dL/dW1: x does not require grad, so autograd skips dL/dx. That is
    5 GEMMs, not 6. Bias, ReLU, loss and the SGD update are O(n*h) elementwise work, < 0.1 % at 8192.
    """
    forward = 2 * n * (d_in * h + h * d_out)
    backward = 2 * n * (2 * h * d_out + d_in * h)
    return forward + backward


def train_step_tflops(n: int, bf16: bool, device: str) -> tuple[float, float]:
    """TFLOP/s and ms of the tutorial's step (nn.Sequential, MSELoss(sum), SGD) at N = D_in = H = D_out = n.

    bf16 the way Lightning's bf16-mixed does it: fp32 weights and update, forward and backward under autocast.
    """
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(n, n), nn.ReLU(), nn.Linear(n, n)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-12)  # the values do not matter here, only the work
    loss_fn = nn.MSELoss(reduction="sum")
    x, y = torch.randn(n, n, device=device), torch.randn(n, n, device=device)

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = cuda_seconds(step)
    return step_flops(n, n, n, n) / seconds / 1e12, seconds * 1e3


def bench_precision(check: Check, label: str, bf16: bool, tf32: bool, n: int, device: str) -> None:
    """Two rows: the matmul peak in this precision, then the training step as a share of that peak."""
    import torch

    torch.set_float32_matmul_precision("high" if tf32 else "highest")  # "highest" = TF32 off
    peak = 0.0

    def matmul() -> tuple[str, str]:
        nonlocal peak
        a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16 if bf16 else torch.float32) for _ in "ab")
        c = torch.empty_like(a)
        peak = 2 * n**3 / cuda_seconds(lambda: torch.mm(a, b, out=c)) / 1e12
        return "ok", f"{peak:.1f} TFLOP/s"

    def step() -> tuple[str, str]:
        if not peak:
            return "skipped", f"no {label} matmul peak to compare with"
        tflops, ms = train_step_tflops(n, bf16, device)
        pct = 100 * tflops / peak
        return ("ok" if pct >= TARGET_PCT else "FAILED"), (
            f"{tflops:.1f} TFLOP/s = {pct:.0f} % of the {label} matmul peak (target >= {TARGET_PCT:.0f} %), "
            f"{ms:.1f} ms/step")

    check.run(f"matmul {label}, {n}x{n}x{n}", matmul, need=BENCH_ROW_S)
    check.run(f"train step {'bf16 autocast' if bf16 else label}, N=D_in=H=D_out={n}", step, need=BENCH_ROW_S)


def benchmark(check: Check, n: int = BENCH_N, device: str = "cuda") -> None:
    for label, bf16, tf32 in (("bf16", True, False), ("fp32, TF32 off", False, False), ("fp32, TF32 on", False, True)):
        bench_precision(check, label, bf16, tf32, n, device)


# -- the CLI and the tests, in subprocesses ----------------------------------------------------------------

def training_runs() -> list[tuple[str, list[str], str | None]]:
    """(name, overrides, skip reason): every trainer in the registry, then the README's GPU commands."""
    sys.path.insert(0, str(SRC))
    from backproplab.trainers import registry

    def skip(name: str, spec: registry.TrainerSpec) -> str | None:
        if "gpu" not in spec.devices:
            return "CPU-only trainer"
        if absent := registry.missing(name):  # an optional extra (jax, optax) this node lacks
            return f"{', '.join(absent)} not installed"
        return None

    runs = [(f"trainer={name}", [f"trainer={name}"], skip(name, spec)) for name, spec in registry.trainers().items()]
    for overrides in (["trainer=lightning", "model=dynamic", "optim=sgd_momentum"],
                      ["trainer=lightning", "trainer.precision=bf16-mixed"]):
        runs.append((" ".join(overrides), overrides, None))
    return runs


def train_cli(overrides: list[str], workdir: Path, check: Check) -> tuple[str, str]:
    """One run of scripts/train.py on CUDA, launched from its own dir (Hydra's outputs/ land there)."""
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), *overrides, ACCELERATOR, "logger=none",
           f"trainer.max_steps={STEPS}"]  # no terminal: no progress bar
    timeout = check.timeout(RUN_TIMEOUT_S)
    # HYDRA_FULL_ERROR: the last line of stderr is then the error itself, not Hydra's hint to set it
    rc, out, err = run_process(cmd, Path(tempfile.mkdtemp(dir=workdir)), timeout, HYDRA_FULL_ERROR="1")
    if rc is None:
        return "FAILED", f"timed out after {timeout:.0f} s: {last_line(err, out)}"
    if rc != 0:
        if module := missing_module(err + out):
            return "skipped", f"{module} not installed"
        # torch has a GPU (checked first): the trainer's framework does not see it, or is a CPU-only build
        # (tensorflow-cpu: the line says how to swap in the [tf-gpu] extra)
        if "no CUDA device is available" in err or "CPU-only build" in err:
            return "skipped", f"the trainer's framework sees no GPU: {last_line(err)}"
        return "FAILED", f"exit {rc}: {last_line(err, out)}"
    return summarize_run(out + "\n" + err)


def summarize_run(log: str) -> tuple[str, str]:
    """Status and detail from run.py's last summary line; the loss must have gone down."""
    found = LOSS_LINE.findall(log)
    if not found:
        return "FAILED", f"no loss line in the output: {last_line(log)}"
    steps, first, final, loop_s = found[-1]
    detail = f"loss {first} -> {final}, loop {float(loop_s):.3f} s ({steps} steps)"
    if not float(final) < float(first):
        return "FAILED", f"the loss did not go down: {detail}"
    return "ok", detail


def pytest_counts(output: str) -> dict[str, int]:
    """Counts from pytest's summary line ("2 passed, 1 skipped, 180 deselected in 9.1s"), the last one."""
    for line in reversed(output.splitlines()):
        if found := PYTEST_COUNT.findall(line):
            return {("errors" if kind == "error" else kind): int(k) for k, kind in found}
    return {}


def junit_failures(path: Path) -> tuple[list[str], list[str]]:
    """(missing modules, real failures) over the failed and errored cases of a JUnit XML report.

    A case whose failure names a module this machine lacks (mlflow, tensorflow, hydra...) shows a limit of the
    environment, not of the code: it is reported as skipped. Any other case is a real failure.
    """
    missing: list[str] = []
    real: list[str] = []
    if not path.exists():
        return missing, real
    for case in ET.parse(path).getroot().iter("testcase"):
        for bad in [*case.iter("failure"), *case.iter("error")]:
            if module := missing_module(f"{bad.get('message', '')}\n{bad.text or ''}"):
                missing.append(module)
            else:
                real.append(f"{case.get('classname', '')}::{case.get('name', '')}".strip(":"))
    return missing, real


def pytest_gpu(check: Check) -> tuple[str, str]:
    """pytest -m gpu on the tests; collection errors do not stop the other modules."""
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", f"--junitxml={junit}", str(REPO / "tests")]
        timeout = check.timeout(PYTEST_TIMEOUT_S)
        rc, out, err = run_process(cmd, REPO, timeout)
        if rc is None:
            return "FAILED", f"timed out after {timeout:.0f} s"
        missing, real = junit_failures(junit)
    if rc not in (0, 1, 5):  # 2 interrupted, 3 internal error, 4 usage error (5: no test selected)
        return "FAILED", f"pytest exit {rc}: {last_line(err, out)}"
    counts = pytest_counts(out)
    passed, skipped = counts.get("passed", 0), counts.get("skipped", 0) + len(missing)
    detail = f"{passed} passed, {len(real)} failed, {skipped} skipped"
    if missing:
        detail += f" ({len(missing)} of them: {', '.join(sorted(set(missing)))} not installed)"
    if real:
        return "FAILED", f"{detail}; first failure: {real[0]}"
    return ("ok" if passed else "skipped"), detail


# -- main ---------------------------------------------------------------------------------------------------

def cuda_or_reason() -> str | None:
    """None when a CUDA device is usable, else the one line to print."""
    try:
        import torch
    except ImportError:
        return "gpu-check: no CUDA device available (torch not installed); nothing to check"
    if not torch.cuda.is_available():
        return f"gpu-check: no CUDA device available (torch {torch.__version__}); nothing to check"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=280.0, help="seconds for the whole check (default 280)")
    parser.add_argument("--out", type=Path, default=Path("gpu-check.md"), help="the table's Markdown file")
    args = parser.parse_args(argv)
    if reason := cuda_or_reason():
        print(reason, flush=True)
        return 0

    check = Check(args.budget)
    check.run("device", device_info)
    benchmark(check)  # first: seconds in this process, and it needs neither Hydra nor the trainers
    import torch

    torch.cuda.empty_cache()  # give the GPU's memory back to the subprocesses below

    # without Hydra the CLI cannot start: one reason on every training row rather than a traceback each
    no_hydra = next((f"{dist} not installed" for dist, module in (("hydra-core", "hydra"), ("omegaconf", "omegaconf"))
                     if not has_module(module)), None)
    try:
        runs = training_runs()
    except Exception as e:
        check.add(Row("trainer registry", "FAILED", 0.0, f"{type(e).__name__}: {e}"))
        runs = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as workdir:
        for name, overrides, skip in runs:
            if skip or no_hydra:
                check.add(Row(name, "skipped", 0.0, skip or no_hydra or ""))
            else:
                check.run(name, functools.partial(train_cli, overrides, Path(workdir), check), need=MIN_PROCESS_S)
    check.run("pytest -m gpu", functools.partial(pytest_gpu, check), need=MIN_PROCESS_S)

    failed = sum(r.status == "FAILED" for r in check.rows)
    counts = ", ".join(f"{sum(r.status == s for r in check.rows)} {s}" for s in ("ok", "FAILED", "skipped"))
    total_s = time.monotonic() - check.start
    check.add(Row("total", "FAILED" if failed else "ok", total_s, f"{counts}; budget {args.budget:.0f} s"))
    table = format_table(check.rows)
    args.out.write_text(f"# gpu-check\n\n{table}\n")
    print(f"\n{table}\n\ngpu-check: table written to {args.out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
