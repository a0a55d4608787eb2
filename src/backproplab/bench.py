"""The benchmark of issue 5: every trainer held against the tutorial's own loop, MLflow's cost, start-up and
imports, the nine-example sweep against the nine tutorial scripts, and scaling against a bare ``torch.mm`` chain.

Everything is measured in one run, side by side: the two things compared alternate (noise hits both), after a
warm-up, and the report gives medians and their ratios, with the issue's targets beside them.

    python scripts/bench.py                    # the default: a few minutes on 2 cores
    python scripts/bench.py --quick            # CI: well under a minute (tiny steps, sizes, no full sweep)
    python scripts/bench.py --mlflow           # also log the benchmark as a run of experiment `benchmarks`

Measurements in a fresh process (start-up, imports, MLflow's first-run cost, the sweep) run as subprocesses of
this module (``python -m backproplab.bench _child ...``), whose top-level imports are the standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
TRAIN_SCRIPT = REPO / "scripts" / "train.py"
CHILD_MARK = "BENCH_JSON "  # the line a child process answers on (trainers may print other lines)

HEAVY = ("torch", "tensorflow", "lightning", "pytorch_lightning", "mlflow", "keras", "matplotlib")
NOT_FOR_NUMPY = ("torch", "tensorflow", "lightning", "pytorch_lightning")  # the import target

# trainer -> (the tutorial script whose loop it is held against, the experiment preset with that script's settings)
PAIRS: dict[str, tuple[str, str]] = {
    "numpy": ("numpy_manual", "numpy"),
    "tensor": ("tensor_manual", "tensor"),
    "autograd": ("autograd", "autograd"),
    "function": ("custom_function", "function"),
    "tensorflow": ("tf_static", "tensorflow"),
    "lightning": ("optim_adam", "optim"),
}
# the nine experiment presets and the tutorial script each one reproduces, in the tutorial's order
NINE: dict[str, str] = {
    "numpy": "numpy_manual",
    "tensor": "tensor_manual",
    "autograd": "autograd",
    "function": "custom_function",
    "tensorflow": "tf_static",
    "nn": "nn_sequential",
    "optim": "optim_adam",
    "module": "custom_module",
    "dynamic": "dynamic_net",
}
TORCH_TRAINERS = ("tensor", "autograd", "function", "lightning")
TARGETS = {
    "hand_trainer": 1.2,  # hand-written trainer loop / tutorial loop
    "lightning": 1.5,  # Lightning loop / tutorial optim loop
    "mlflow_loop": 1.10,  # loop with logger=mlflow / loop with logger=none
    "mlflow_fixed_later_s": 0.5,  # MLflow's fixed cost of each later run of a sweep, seconds
    "numpy_process": 2.0,  # `train.py trainer=numpy logger=none` / `python numpy_manual.py`
    "sweep": 0.75,  # the nine-experiment sweep / the nine tutorial processes
    "pct_of_mm": 80.0,  # % of the bare torch.mm rate at the largest size
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
)


# -- small helpers ---------------------------------------------------------------------------------------------

def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 and math.isfinite(a) and math.isfinite(b) else float("nan")


def alternate(i: int, a: Any, b: Any) -> tuple[Any, Any]:
    """a then b on even rounds, b then a on odd ones: drift in the machine's load hits both sides."""
    return (a, b) if i % 2 == 0 else (b, a)


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


def find_seed_dir(explicit: str | None) -> Path | None:
    """The tutorial's nine scripts: --seed-dir, $BACKPROPLAB_SEED_DIR, <repo>/shared/seed or <repo>/../shared/seed."""
    candidates = [explicit, os.environ.get("BACKPROPLAB_SEED_DIR"), REPO / "shared" / "seed",
                  REPO.parent / "shared" / "seed"]
    for c in candidates:
        if c and (Path(c) / "numpy_manual.py").is_file():
            return Path(c).resolve()
    return None


def time_process(cmd: Sequence[str], cwd: Path | str, timeout: float = 900) -> float:
    """Wall time of one process, stdout to /dev/null (the tutorial prints every step)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(map(str, cmd))} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return wall


def run_child(kind: str, *args: str, cwd: Path | str, timeout: float = 900) -> dict[str, Any]:
    """Run ``python -m backproplab.bench _child <kind> ...`` and return what it answered (plus its wall time)."""
    cmd = [sys.executable, "-m", "backproplab.bench", "_child", kind, *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_MARK)]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"child {kind} {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return {**json.loads(lines[-1][len(CHILD_MARK):]), "process_s": wall}


# -- the tutorial's own loops ----------------------------------------------------------------------------------
# Copied from seed/*.py with two changes only: `print(...)` becomes `losses.append(...)` (the value is still
# computed, as the trainers' on_step does), and the data and initial weights come from problem.py, so that
# both sides train on the same arrays for the same number of steps. Each returns (loop seconds, losses).

def tutorial_numpy_manual(problem: Any, cfg: Any) -> tuple[float, list[float]]:
    import numpy as np

    x, y = problem.x, problem.y
    w1, w2 = problem.weights["w1"].copy(), problem.weights["w2"].copy()
    learning_rate = cfg.optim.lr
    losses = []
    start = time.perf_counter()
    for _i in range(cfg.trainer.max_steps):
        h = x.dot(w1)
        h_relu = np.maximum(h, 0)
        y_pred = h_relu.dot(w2)

        loss = np.square(y_pred - y).sum()
        losses.append(loss)  # print(i, loss)

        grad_y_pred = 2.0 * (y_pred - y)
        grad_w2 = h_relu.T.dot(grad_y_pred)
        grad_h_relu = grad_y_pred.dot(w2.T)
        grad_h = grad_h_relu.copy()
        grad_h[h < 0] = 0
        grad_w1 = x.T.dot(grad_h)

        w1 -= learning_rate * grad_w1
        w2 -= learning_rate * grad_w2
    return time.perf_counter() - start, [float(v) for v in losses]


def tutorial_tensor_manual(problem: Any, cfg: Any) -> tuple[float, list[float]]:
    import torch

    x, y = torch.tensor(problem.x), torch.tensor(problem.y)
    w1, w2 = torch.tensor(problem.weights["w1"]), torch.tensor(problem.weights["w2"])
    learning_rate = cfg.optim.lr
    losses = []
    start = time.perf_counter()
    for _i in range(cfg.trainer.max_steps):
        h = x.mm(w1)
        h_relu = h.clamp(min=0)
        y_pred = h_relu.mm(w2)

        loss = (y_pred - y).pow(2).sum().item()
        losses.append(loss)  # print(i, loss)

        grad_y_pred = 2.0 * (y_pred - y)
        grad_w2 = h_relu.t().mm(grad_y_pred)
        grad_h_relu = grad_y_pred.mm(w2.t())
        grad_h = grad_h_relu.clone()
        grad_h[h < 0] = 0
        grad_w1 = x.t().mm(grad_h)

        w1 -= learning_rate * grad_w1
        w2 -= learning_rate * grad_w2
    return time.perf_counter() - start, losses


def tutorial_autograd(problem: Any, cfg: Any) -> tuple[float, list[float]]:
    import torch

    x, y = torch.tensor(problem.x), torch.tensor(problem.y)
    w1 = torch.tensor(problem.weights["w1"], requires_grad=True)
    w2 = torch.tensor(problem.weights["w2"], requires_grad=True)
    learning_rate = cfg.optim.lr
    losses = []
    start = time.perf_counter()
    for _i in range(cfg.trainer.max_steps):
        y_pred = x.mm(w1).clamp(min=0).mm(w2)

        loss = (y_pred - y).pow(2).sum()
        losses.append(loss.item())  # print(i, loss.item())

        loss.backward()

        with torch.no_grad():
            w1 -= learning_rate * w1.grad
            w2 -= learning_rate * w2.grad

            w1.grad.zero_()
            w2.grad.zero_()
    return time.perf_counter() - start, losses


@functools.cache
def _tutorial_my_relu() -> Any:
    """seed/custom_function.py's MyReLU, defined on first use (torch is imported lazily)."""
    import torch

    class MyReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, input: Any) -> Any:
            ctx.save_for_backward(input)
            return input.clamp(min=0)

        @staticmethod
        def backward(ctx: Any, grad_output: Any) -> Any:
            (input,) = ctx.saved_tensors
            grad_input = grad_output.clone()
            grad_input[input < 0] = 0
            return grad_input

    return MyReLU


def tutorial_custom_function(problem: Any, cfg: Any) -> tuple[float, list[float]]:
    import torch

    MyReLU = _tutorial_my_relu()
    x, y = torch.tensor(problem.x), torch.tensor(problem.y)
    w1 = torch.tensor(problem.weights["w1"], requires_grad=True)
    w2 = torch.tensor(problem.weights["w2"], requires_grad=True)
    learning_rate = cfg.optim.lr
    losses = []
    start = time.perf_counter()
    for _i in range(cfg.trainer.max_steps):
        relu = MyReLU.apply

        y_pred = relu(x.mm(w1)).mm(w2)

        loss = (y_pred - y).pow(2).sum()
        losses.append(loss.item())  # print(i, loss.item())

        loss.backward()

        with torch.no_grad():
            w1 -= learning_rate * w1.grad
            w2 -= learning_rate * w2.grad

            w1.grad.zero_()
            w2.grad.zero_()
    return time.perf_counter() - start, losses


def tutorial_tf_static(problem: Any, cfg: Any) -> tuple[float, list[float]]:
    """The graph is built inside an explicit tf.Graph (as trainers/tensorflow.py does, instead of the tutorial's
    process-wide disable_eager_execution()); only the session loop is timed, as in the trainer."""
    import tensorflow

    tf = tensorflow.compat.v1
    d_in, d_out = problem.x.shape[1], problem.y.shape[1]
    g = tf.Graph()
    with g.as_default():
        x = tf.placeholder(tf.float32, shape=(None, d_in))
        y = tf.placeholder(tf.float32, shape=(None, d_out))

        w1 = tf.Variable(problem.weights["w1"])  # tf.Variable(tf.random_normal((D_in, H)))
        w2 = tf.Variable(problem.weights["w2"])

        h = tf.matmul(x, w1)
        h_relu = tf.maximum(h, tf.zeros(1))
        y_pred = tf.matmul(h_relu, w2)

        loss = tf.reduce_sum((y - y_pred) ** 2.0)

        grad_w1, grad_w2 = tf.gradients(loss, [w1, w2])

        learning_rate = cfg.optim.lr
        new_w1 = w1.assign(w1 - learning_rate * grad_w1)
        new_w2 = w2.assign(w2 - learning_rate * grad_w2)
        init = tf.global_variables_initializer()

    losses = []
    with tf.Session(graph=g) as sess:
        sess.run(init)
        x_value, y_value = problem.x, problem.y
        start = time.perf_counter()
        for _ in range(cfg.trainer.max_steps):
            loss_value, _, _ = sess.run([loss, new_w1, new_w2], feed_dict={x: x_value, y: y_value})
            losses.append(loss_value)  # print(loss_value)
        loop_s = time.perf_counter() - start
    return loop_s, [float(v) for v in losses]


def tutorial_optim_adam(problem: Any, cfg: Any) -> tuple[float, list[float]]:
    import torch

    from backproplab.models import load_weights

    x, y = torch.tensor(problem.x), torch.tensor(problem.y)
    d_in, h, d_out = problem.x.shape[1], cfg.model.hidden, problem.y.shape[1]
    model = torch.nn.Sequential(
        torch.nn.Linear(d_in, h),
        torch.nn.ReLU(),
        torch.nn.Linear(h, d_out),
    )
    load_weights(model, problem.weights)  # the problem's initial weights, not torch's random ones
    loss_fn = torch.nn.MSELoss(reduction="sum")
    learning_rate = cfg.optim.lr
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    losses = []
    start = time.perf_counter()
    for _i in range(cfg.trainer.max_steps):
        y_pred = model(x)

        loss = loss_fn(y_pred, y)
        losses.append(loss.item())  # print(i, loss.item())

        optimizer.zero_grad()

        loss.backward()

        optimizer.step()
    return time.perf_counter() - start, losses


TUTORIAL_LOOPS: dict[str, Callable[[Any, Any], tuple[float, list[float]]]] = {
    "numpy_manual": tutorial_numpy_manual,
    "tensor_manual": tutorial_tensor_manual,
    "autograd": tutorial_autograd,
    "custom_function": tutorial_custom_function,
    "tf_static": tutorial_tf_static,
    "optim_adam": tutorial_optim_adam,
}


# -- 1. each trainer against its tutorial loop ------------------------------------------------------------------

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


def run_trainer(name: str, problem: Any, cfg: Any, silence: bool = False) -> dict[str, Any]:
    """One call of the trainer as run.train makes it with logger=none (a Recorder's on_step)."""
    from backproplab.steps import Recorder
    from backproplab.trainers.registry import get_train

    train = get_train(name)
    rec = Recorder()
    start = time.perf_counter()
    with quiet() if silence else contextlib.nullcontext():
        result = train(problem, cfg, rec.on_step)
    return {"loop_s": result.loop_s, "call_s": time.perf_counter() - start, "final_loss": rec.losses[-1]}


def bench_trainers(s: Settings, names: Sequence[str]) -> dict[str, Any]:
    """Result.loop_s of each trainer against the loop of its tutorial script, alternating, same data/weights/steps.

    Lightning is also run with its progress bar on (output to /dev/null) to show what the bar costs.
    """
    from backproplab.problem import make_problem
    from backproplab.trainers.registry import get_train

    out: dict[str, Any] = {}
    for name in names:
        tutorial, experiment = PAIRS[name]
        get_train(name)  # imports first: trainers/tensorflow.py sets TF's environment before TF is imported
        cfg = compose_cfg(f"experiment={experiment}", "logger=none", f"trainer.max_steps={s.steps}",
                          "trainer.progress_bar=false")
        problem = make_problem(cfg)
        reference = TUTORIAL_LOOPS[tutorial]
        variants: dict[str, Callable[[], dict[str, Any]]] = {
            "trainer": functools.partial(run_trainer, name, problem, cfg),
            "tutorial": functools.partial(run_tutorial, reference, problem, cfg),
        }
        if name == "lightning":
            bar_cfg = compose_cfg(f"experiment={experiment}", "logger=none", f"trainer.max_steps={s.steps}",
                                  "trainer.progress_bar=true")
            variants["trainer_progress_bar"] = functools.partial(run_trainer, name, problem, bar_cfg, silence=True)
        samples: dict[str, list[dict[str, Any]]] = {k: [] for k in variants}
        load0 = load()
        for i in range(s.warmup + s.repeats):
            keys = list(variants)
            keys = keys[i % len(keys):] + keys[: i % len(keys)]  # rotate the order round by round
            for k in keys:
                sample = variants[k]()
                if i >= s.warmup:
                    samples[k].append(sample)
        row = {
            "tutorial": tutorial,
            "experiment": experiment,
            "steps": s.steps,
            "loop_s": {k: median([x["loop_s"] for x in v]) for k, v in samples.items()},
            "samples_loop_s": {k: [round(x["loop_s"], 5) for x in v] for k, v in samples.items()},
            "trainer_call_s": median([x["call_s"] for x in samples["trainer"]]),
            "final_loss": {k: v[-1]["final_loss"] for k, v in samples.items()},
            "load": [load0, load()],
        }
        row["ratio"] = ratio(row["loop_s"]["trainer"], row["loop_s"]["tutorial"])
        row["call_ratio"] = ratio(row["trainer_call_s"], row["loop_s"]["tutorial"])
        if "trainer_progress_bar" in samples:
            row["progress_bar_ratio"] = ratio(row["loop_s"]["trainer_progress_bar"], row["loop_s"]["tutorial"])
        row["target"] = TARGETS["lightning"] if name == "lightning" else TARGETS["hand_trainer"]
        out[name] = row
        print(f"[bench] {name:10s} loop {row['loop_s']['trainer']:.3f}s vs tutorial {row['loop_s']['tutorial']:.3f}s"
              f" -> {row['ratio']:.2f}x", file=sys.stderr, flush=True)
    return out


def run_tutorial(loop: Callable[[Any, Any], tuple[float, list[float]]], problem: Any, cfg: Any) -> dict[str, Any]:
    loop_s, losses = loop(problem, cfg)
    return {"loop_s": loop_s, "final_loss": losses[-1]}


# -- 2. MLflow -----------------------------------------------------------------------------------------------

def timed_mlflow_run(cfg: Any, problem: Any) -> dict[str, float]:
    """run.train's body with logger=mlflow, timed in phases: the tracker's __enter__ (store, run start, tags,
    params), the training call (its Result.loop_s includes the per-step logging), finish (final metrics,
    config, curve, weights or model) and __exit__ (flush, end_run)."""
    from backproplab.tracking.run import MlflowTracker
    from backproplab.trainers.registry import get_train

    train = get_train(cfg.trainer.name)  # the trainer's own imports are not MLflow's cost
    t0 = time.perf_counter()
    with MlflowTracker(cfg) as rec:
        t1 = time.perf_counter()
        result = train(problem, cfg, rec.on_step)
        t2 = time.perf_counter()
        rec.finish(result, problem)
        t3 = time.perf_counter()
    t4 = time.perf_counter()
    phases = {"enter_s": t1 - t0, "loop_s": result.loop_s, "call_s": t2 - t1, "finish_s": t3 - t2, "exit_s": t4 - t3}
    # the fixed cost is everything around the training call; the per-step logging is inside loop_s
    phases["fixed_s"] = phases["enter_s"] + phases["finish_s"] + phases["exit_s"]
    return phases


def bench_mlflow_loop(s: Settings, names: Sequence[str], tmp: Path) -> dict[str, Any]:
    """The loop with every step logged to MLflow (a temp sqlite store) against the same loop with logger=none."""
    from backproplab.problem import make_problem

    out: dict[str, Any] = {}
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    # a store given by URI keeps its artifacts under ./mlruns of the cwd: keep them in tmp
    with chdir(tmp):
        for name in names:
            experiment = PAIRS[name][1]
            base = [f"experiment={experiment}", f"trainer.max_steps={s.steps}", "trainer.progress_bar=false"]
            cfg_none = compose_cfg(*base, "logger=none")
            cfg_mlflow = compose_cfg(*base, "logger=mlflow", f"logger.tracking_uri={uri}",
                                     "logger.experiment_name=bench")
            problem = make_problem(cfg_none)
            timed_mlflow_run(cfg_mlflow, problem)  # creates the store: that is the first run's cost, not this
            none: list[float] = []
            runs: list[dict[str, float]] = []
            for i in range(s.warmup + s.mlflow_repeats):
                for which in alternate(i, "none", "mlflow"):
                    if which == "none":
                        sample = run_trainer(name, problem, cfg_none)["loop_s"]
                        if i >= s.warmup:
                            none.append(sample)
                    else:
                        phases = timed_mlflow_run(cfg_mlflow, problem)
                        if i >= s.warmup:
                            runs.append(phases)
            row = {
                "experiment": experiment,
                "steps": s.steps,
                "loop_none_s": median(none),
                "loop_mlflow_s": median([r["loop_s"] for r in runs]),
                "fixed_in_process_s": median([r["fixed_s"] for r in runs]),
                "phases_in_process_s": {k: median([r[k] for r in runs]) for k in runs[0]},
                "flush_every": int(cfg_mlflow.logger.get("flush_every", 0)),
            }
            row["ratio"] = ratio(row["loop_mlflow_s"], row["loop_none_s"])
            row["per_step_overhead_ms"] = 1000 * (row["loop_mlflow_s"] - row["loop_none_s"]) / s.steps
            row["target"] = TARGETS["mlflow_loop"]
            out[name] = row
            print(f"[bench] mlflow {name}: loop {row['loop_mlflow_s']:.3f}s vs {row['loop_none_s']:.3f}s "
                  f"-> {row['ratio']:.2f}x", file=sys.stderr, flush=True)
    return out


# what the fixed-cost child times inside each run, by name (a breakdown; flush also runs inside the loop)
TRACKING_FUNCS = ("open_store", "git_commit", "find_parent_run", "flatten", "resolved_yaml", "loss_curve")
MLFLOW_FUNCS = ("start_run", "log_params", "log_metrics", "log_text", "log_figure", "end_run")
TRACKER_METHODS = ("flush", "log_weights")


def bench_mlflow_fixed(s: Settings, tmp: Path) -> dict[str, Any]:
    """MLflow's fixed cost per run in a fresh process running several runs one after another, like a sweep's
    jobs in the sequential launcher: the first run pays `import mlflow` and the store's creation."""
    child = run_child("fixed", str(tmp), str(s.steps), *s.fixed_plan, cwd=tmp)
    runs = child["runs"]
    first = runs[0]
    out: dict[str, Any] = {
        "plan": list(s.fixed_plan),
        "steps": s.steps,
        "import_mlflow_s": child["import_mlflow_s"],
        "first": {"experiment": first["experiment"], "fixed_s": child["import_mlflow_s"] + first["fixed_s"],
                  "phases": first["phases"], "breakdown": first["breakdown"]},
        "later": {},
        "runs": runs,
    }
    for experiment in dict.fromkeys(s.fixed_plan):
        later = [r for r in runs[1:] if r["experiment"] == experiment]
        if experiment != first["experiment"]:
            later = later[1:]  # that experiment's first run pays its own first-time imports (mlflow.pytorch)
        if not later:
            continue
        out["later"][experiment] = {
            "trainer": later[0]["trainer"],
            "runs": len(later),
            "fixed_s": median([r["fixed_s"] for r in later]),
            "phases": {k: median([r["phases"][k] for r in later]) for k in later[0]["phases"]},
            "breakdown": {k: median([r["breakdown"].get(k, 0.0) for r in later]) for k in later[0]["breakdown"]},
        }
    worst = max((v["fixed_s"] for v in out["later"].values()), default=float("nan"))
    out["later_worst_s"] = worst
    out["target_later_s"] = TARGETS["mlflow_fixed_later_s"]
    print(f"[bench] mlflow fixed: first {out['first']['fixed_s']:.2f}s, later (worst) {worst:.2f}s",
          file=sys.stderr, flush=True)
    return out


def _child_fixed(tmp: str, steps: str, *experiments: str) -> dict[str, Any]:
    """In a fresh process: MLflow runs one after another, each timed in phases and broken down by call."""
    import backproplab.tracking.run as tracking
    from backproplab.problem import make_problem

    # a sweep job also looks up its parent run (find_parent_run); pretend to be one, so that its cost counts
    tracking.sweep_dir = lambda: str(Path(tmp) / "multirun")  # type: ignore[assignment]
    uri = f"sqlite:///{Path(tmp) / 'fixed' / 'mlflow.db'}"
    cfgs = {e: compose_cfg(f"experiment={e}", f"trainer.max_steps={steps}", "trainer.progress_bar=false",
                           "logger=mlflow", f"logger.tracking_uri={uri}", "logger.experiment_name=bench")
            for e in dict.fromkeys(experiments)}
    os.chdir(tmp)  # artifacts of a store given by URI go to ./mlruns
    start = time.perf_counter()
    import mlflow

    import_s = time.perf_counter() - start
    buckets: dict[str, float] = {}
    for owner, names in ((tracking, TRACKING_FUNCS), (mlflow, MLFLOW_FUNCS), (tracking.MlflowTracker, TRACKER_METHODS)):
        for fn_name in names:
            if hasattr(owner, fn_name):
                setattr(owner, fn_name, _timer(getattr(owner, fn_name), fn_name, buckets))
    runs = []
    for e in experiments:
        cfg = cfgs[e]
        problem = make_problem(cfg)
        buckets.clear()
        phases = timed_mlflow_run(cfg, problem)
        runs.append({"experiment": e, "trainer": cfg.trainer.name, "fixed_s": phases["fixed_s"],
                     "phases": phases, "breakdown": dict(buckets)})
    return {"import_mlflow_s": import_s, "runs": runs}


def _timer(fn: Callable[..., Any], name: str, buckets: dict[str, float]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            buckets[name] = buckets.get(name, 0.0) + time.perf_counter() - start

    return wrapper


# -- 3. start-up and imports ------------------------------------------------------------------------------------

def bench_startup(s: Settings, seed: Path | None, tmp: Path) -> dict[str, Any]:
    """Whole-process wall time: `train.py trainer=numpy logger=none` against `python seed/numpy_manual.py`.

    Also `experiment=numpy logger=none`, the like-for-like process (float64 and the tutorial's net, as the
    script; trainer=numpy alone trains the default float32 net with biases)."""
    if seed is None:
        return {"skipped": "the tutorial scripts (seed/) were not found; pass --seed-dir"}
    commands = {
        "ours": [sys.executable, TRAIN_SCRIPT, "trainer=numpy", "logger=none"],
        "ours_experiment": [sys.executable, TRAIN_SCRIPT, "experiment=numpy", "logger=none"],
        "tutorial": [sys.executable, seed / "numpy_manual.py"],
    }
    walls: dict[str, list[float]] = {k: [] for k in commands}
    for i in range(s.process_warmup + s.process_repeats):
        keys = list(commands)
        for k in keys[i % len(keys):] + keys[: i % len(keys)]:  # rotate the order round by round
            wall = time_process(commands[k], cwd=tmp)
            if i >= s.process_warmup:
                walls[k].append(wall)
    out = {
        "command": "python scripts/train.py trainer=numpy logger=none",
        "command_experiment": "python scripts/train.py experiment=numpy logger=none",
        "tutorial": "python seed/numpy_manual.py > /dev/null",
        "ours_s": median(walls["ours"]),
        "ours_experiment_s": median(walls["ours_experiment"]),
        "tutorial_s": median(walls["tutorial"]),
        "samples": walls,
        "target": TARGETS["numpy_process"],
    }
    out["ratio"] = ratio(out["ours_s"], out["tutorial_s"])
    out["ratio_experiment"] = ratio(out["ours_experiment_s"], out["tutorial_s"])
    print(f"[bench] start-up: {out['ours_s']:.2f}s (experiment=numpy {out['ours_experiment_s']:.2f}s) vs "
          f"{out['tutorial_s']:.2f}s -> {out['ratio']:.2f}x", file=sys.stderr, flush=True)
    return out


def bench_imports(s: Settings, tmp: Path) -> dict[str, Any]:
    """Which heavy modules each trainer's process imports (compose + run.train with logger=none)."""
    out: dict[str, Any] = {}
    for name in s.import_trainers:
        answer = run_child("imports", f"trainer={name}", "logger=none", "trainer.max_steps=20",
                           "trainer.progress_bar=false", cwd=tmp)
        out[name] = answer
    if "numpy" in out:
        bad = sorted(set(out["numpy"]["heavy"]) & set(NOT_FOR_NUMPY))
        out["numpy_forbidden"] = bad
    summary = ", ".join(f"{k}={v['heavy']}" for k, v in out.items() if isinstance(v, dict))
    print(f"[bench] imports: {summary}", file=sys.stderr, flush=True)
    return out


def _child_imports(*overrides: str) -> dict[str, Any]:
    start = time.perf_counter()
    from backproplab.run import train

    cfg = compose_cfg(*overrides)
    composed = time.perf_counter()
    train(cfg)
    done = time.perf_counter()
    heavy = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
    return {"heavy": heavy, "compose_s": composed - start, "train_s": done - composed}


# -- 4. the nine-experiment sweep against the nine tutorial processes ------------------------------------------

def bench_sweep(s: Settings, seed: Path | None, tmp: Path) -> dict[str, Any]:
    """`train.py -m experiment=<all nine>` (sequential launcher, full MLflow record in a temp launch dir)
    against the nine tutorial scripts run one after another as processes."""
    if not s.sweep:
        return {"skipped": "sweep not requested"}
    if seed is None:
        return {"skipped": "the tutorial scripts (seed/) were not found; pass --seed-dir"}
    sweep_cmd = [sys.executable, TRAIN_SCRIPT, "-m", f"experiment={','.join(s.sweep)}"]
    sweeps: list[float] = []
    tutorials: list[float] = []
    for i in range(s.sweep_repeats):
        for which in alternate(i, "tutorial", "sweep"):
            if which == "sweep":
                launch = Path(tempfile.mkdtemp(prefix="sweep-", dir=tmp))  # its own store and multirun dir
                sweeps.append(time_process(sweep_cmd, cwd=launch))
            else:
                tutorials.append(sum(time_process([sys.executable, seed / f"{NINE[e]}.py"], cwd=tmp)
                                     for e in s.sweep))
    out = {
        "experiments": list(s.sweep),
        "command": f"python scripts/train.py -m experiment={','.join(s.sweep)}",
        "sweep_s": median(sweeps),
        "tutorial_s": median(tutorials),
        "samples": {"sweep": sweeps, "tutorial": tutorials},
        "target": TARGETS["sweep"],
    }
    out["ratio"] = ratio(out["sweep_s"], out["tutorial_s"])
    print(f"[bench] sweep: {out['sweep_s']:.1f}s vs {out['tutorial_s']:.1f}s -> {out['ratio']:.2f}x",
          file=sys.stderr, flush=True)
    return out


# -- 5. scaling against a bare torch.mm chain -----------------------------------------------------------------

def step_flops(n: int, d_in: int, h: int, d_out: int) -> int:
    """Matmul FLOPs of one training step (2 per multiply-add), biases and elementwise ops left out:
    forward x@w1 (2·N·D_in·H) and h@w2 (2·N·H·D_out); backward grad_w2 = h.T@g (2·N·H·D_out),
    grad_h = g@w2.T (2·N·H·D_out) and grad_w1 = x.T@grad_h (2·N·D_in·H). No trainer computes a gradient for
    x (it needs none), so the total is 4·N·D_in·H + 6·N·H·D_out, not 6·N·D_in·H + 6·N·H·D_out."""
    return 4 * n * d_in * h + 6 * n * h * d_out


def mm_chain(x: Any, w1: Any, w2: Any, g: Any, steps: int) -> list[float]:
    """The same five matmuls as a training step, and nothing else; returns the time at the end of each step."""
    sync = _sync(x.device)
    stamps = []
    for _ in range(steps):
        h = x.mm(w1)  # forward, layer 1
        h.mm(w2)  # forward, layer 2
        h.t().mm(g)  # grad_w2
        gh = g.mm(w2.t())  # grad_h
        gw1 = x.t().mm(gh)  # grad_w1
        sync(gw1)
        stamps.append(time.perf_counter())
    return stamps


def _sync(device: Any) -> Callable[[Any], None]:
    import torch

    if device.type == "cuda":
        return lambda t: torch.cuda.synchronize()
    return lambda t: None


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


def intervals(stamps: Sequence[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def chain_run(x: Any, w1: Any, w2: Any, g: Any, steps: int) -> list[float]:
    return intervals(mm_chain(x, w1, w2, g, steps))


def trainer_run(name: str, cfg: Any, problem: Any, steps: int) -> list[float]:
    """Steady-state step times of one trainer call."""
    from backproplab.trainers.registry import get_train

    cfg.trainer.max_steps = steps
    clock = StepClock()
    get_train(name)(problem, cfg, clock)
    return intervals(clock.stamps)


def bench_scaling(s: Settings, device: str = "cpu") -> dict[str, Any]:
    """Time per step and GFLOP/s of each torch trainer at N = D_in = H = size, against the mm chain's rate.

    On CUDA the hand-written trainers run float32 (held against a float32 chain) and Lightning runs
    trainer.precision=bf16-mixed (held against a bfloat16 chain)."""
    import torch

    from backproplab.problem import make_problem

    rows: list[dict[str, Any]] = []
    for size in s.sizes:
        n = d_in = h = size
        flops = step_flops(n, d_in, h, s.d_out)
        base = [f"data.n={n}", f"data.d_in={d_in}", f"model.hidden={h}", f"data.d_out={s.d_out}",
                "data.dtype=float32", "model=sequential", "model.bias=false", "model.init=default",
                "loss=mse_mean", "optim=sgd", "optim.lr=1e-3", "logger=none", "trainer.progress_bar=false"]
        if device == "cuda":
            base.append("accelerator=gpu")
        cfgs = {t: compose_cfg(f"trainer={t}", *base) for t in TORCH_TRAINERS}
        if device == "cuda":
            cfgs["lightning"] = compose_cfg("trainer=lightning", *base, "trainer.precision=bf16-mixed")
        problem = make_problem(cfgs["tensor"])
        dev = torch.device("cuda:0" if device == "cuda" else "cpu")
        chains = {"mm": torch.float32}
        if device == "cuda":
            chains["mm_bf16"] = torch.bfloat16
        tensors = {}
        for key, dtype in chains.items():
            x = torch.tensor(problem.x, device=dev, dtype=dtype)
            w1 = torch.tensor(problem.weights["w1"], device=dev, dtype=dtype)
            w2 = torch.tensor(problem.weights["w2"], device=dev, dtype=dtype)
            g = torch.randn(n, s.d_out, device=dev, dtype=dtype)
            tensors[key] = (x, w1, w2, g)
        # size the blocks from the chain's own step time
        mm_chain(*tensors["mm"], steps=2)
        probe = intervals(mm_chain(*tensors["mm"], steps=3))
        t_step = max(median(probe), 1e-6)
        steps = int(min(200, max(3, math.ceil(s.block_s / t_step) + 1)))
        big = t_step * steps > 2.5 * s.block_s  # at the largest sizes: one round, chains before and after
        rounds = 1 if big else 2

        impls: dict[str, Callable[[int], list[float]]] = {
            key: functools.partial(chain_run, *tensors[key]) for key in chains
        }
        for t in TORCH_TRAINERS:
            impls[t] = functools.partial(trainer_run, t, cfgs[t], problem)
        times: dict[str, list[float]] = {k: [] for k in impls}
        if not big:
            for k in impls:  # warm-up: first calls, allocator
                impls[k](3)
        for r in range(rounds):
            keys = list(impls)
            keys = keys[r % len(keys):] + keys[: r % len(keys)]
            for k in keys:
                times[k] += impls[k](steps)
        if big:
            for k in chains:
                times[k] += impls[k](steps)
        for k, ts in times.items():
            t_med = median(ts)
            ref_key = "mm_bf16" if (device == "cuda" and k == "lightning") else "mm"
            rows.append({"size": size, "impl": k, "step_ms": 1000 * t_med, "gflops": flops / t_med / 1e9,
                         "intervals": len(ts), "vs": ref_key})
        ref = {r["impl"]: r["gflops"] for r in rows if r["size"] == size and r["impl"] in chains}
        for r in rows:
            if r["size"] == size:
                r["pct_of_mm"] = 100 * r["gflops"] / ref[r["vs"]]
        print(f"[bench] scaling {device} {size}: " + ", ".join(
            f"{r['impl']} {r['step_ms']:.2f}ms ({r['pct_of_mm']:.0f}%)" for r in rows if r["size"] == size),
            file=sys.stderr, flush=True)
    return {"device": device, "d_out": s.d_out, "dtype": "float32",
            "flops_formula": "4*N*D_in*H + 6*N*H*D_out per step (forward + backward matmuls, no grad for x)",
            "rows": rows, "largest": max(s.sizes), "target_pct": TARGETS["pct_of_mm"]}


# -- 6. torch.compile (optional) -----------------------------------------------------------------------------

def bench_compile(s: Settings) -> dict[str, Any]:
    """The Lightning trainer at the largest size with its net wrapped in torch.compile, against the eager net.

    There is no trainer.compile key; the benchmark wraps the net where the trainer builds it (its load_weights),
    which is what such a key would do."""
    import torch

    import backproplab.trainers.lightning as lt
    from backproplab.problem import make_problem

    size = max(s.sizes)
    cfg = compose_cfg("trainer=lightning", f"data.n={size}", f"data.d_in={size}", f"model.hidden={size}",
                      f"data.d_out={s.d_out}", "model.bias=false", "loss=mse_mean", "optim=sgd", "optim.lr=1e-3",
                      "logger=none", "trainer.progress_bar=false")
    problem = make_problem(cfg)
    original = lt.load_weights

    def run(compiled: bool, steps: int) -> tuple[list[float], float]:
        cfg.trainer.max_steps = steps
        if compiled:
            lt.load_weights = lambda net, w: torch.compile(original(net, w))  # type: ignore[assignment]
        try:
            clock = StepClock()
            start = time.perf_counter()
            lt.train(problem, cfg, clock)
            return intervals(clock.stamps), clock.stamps[0] - start
        finally:
            lt.load_weights = original

    try:
        eager, _ = run(False, 4)
        compiled, first = run(True, 4)  # the first step compiles
    except Exception as e:  # no C++ compiler, an unsupported op: report, do not fail the benchmark
        return {"size": size, "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
    out = {"size": size, "eager_step_ms": 1000 * median(eager), "compiled_step_ms": 1000 * median(compiled),
           "first_compiled_step_s": first}
    out["speedup"] = ratio(out["eager_step_ms"], out["compiled_step_ms"])
    return out


# -- the report ------------------------------------------------------------------------------------------------

def fmt(x: Any, digits: int = 2, suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}{suffix}"


def verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "**missed**")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the issue with the measured figure beside it."""
    rows: list[dict[str, Any]] = []

    def add(name: str, measured: float | None, limit: float, unit: str, at_most: bool = True) -> None:
        ok = None
        if measured is not None and math.isfinite(measured):
            ok = measured <= limit if at_most else measured >= limit
        rows.append({"target": name, "measured": measured, "limit": limit, "unit": unit,
                     "at_most": at_most, "met": ok})

    for name, r in results.get("trainers", {}).items():
        what = "tutorial optim loop" if name == "lightning" else "its tutorial loop"
        add(f"{name} loop vs {what} ({r['tutorial']}.py)", r["ratio"], r["target"], "x")
    for name, r in results.get("mlflow_loop", {}).items():
        add(f"{name} loop with logger=mlflow vs logger=none", r["ratio"], r["target"], "x")
    fixed = results.get("mlflow_fixed", {})
    for experiment, r in fixed.get("later", {}).items():
        add(f"MLflow fixed cost, each later run ({experiment}: {r['trainer']})", r["fixed_s"],
            TARGETS["mlflow_fixed_later_s"], "s")
    st = results.get("startup", {})
    if "ratio" in st:
        add("numpy process vs tutorial numpy process", st["ratio"], st["target"], "x")
    imp = results.get("imports", {})
    if "numpy_forbidden" in imp:
        rows.append({"target": "numpy process imports no torch / TensorFlow / Lightning",
                     "measured": ", ".join(imp["numpy_forbidden"]) or "none", "limit": "none", "unit": "",
                     "at_most": True, "met": not imp["numpy_forbidden"]})
    sw = results.get("sweep", {})
    if "ratio" in sw:
        add(f"{len(sw['experiments'])}-experiment sweep vs the tutorial processes", sw["ratio"], sw["target"], "x")
    sc = results.get("scaling", {})
    for r in sc.get("rows", []):
        if r["size"] == sc["largest"] and r["impl"] in TORCH_TRAINERS:
            add(f"{r['impl']} at N=D_in=H={r['size']}: % of bare torch.mm", r["pct_of_mm"], sc["target_pct"], "%",
                at_most=False)
    return rows


def markdown(results: dict[str, Any]) -> str:
    m = results["meta"]
    lines = [
        "# backproplab benchmark",
        "",
        f"{m['machine']}, threads: {m['threads']}; load average {m['load_start']} at the start, "
        f"{m['load_end']} at the end, {max(m['load_samples'])} at most between sections; "
        f"{m['mode']} settings; {m['duration_s']:.0f} s. Medians of {m['settings']['repeats']} rounds after "
        f"{m['settings']['warmup']} warm-up, the compared sides alternating.",
    ]
    if max(m["load_samples"]) > (os.cpu_count() or 1) and m["threads"] == "library defaults":
        lines += ["", "**The machine was loaded** (load average above its CPU count at times: "
                  f"{', '.join(map(str, m['load_samples']))}): multi-threaded BLAS/OpenMP on the tutorial's tiny "
                  "matrices then stalls on descheduled threads, which swamps the overheads measured here; "
                  "`--threads 1` gives steadier ratios."]
    lines += [
        "",
        "## Targets",
        "",
        "| target | measured | target | verdict |",
        "|---|---:|---:|---|",
    ]
    for t in results["targets"]:
        if isinstance(t["measured"], str):
            measured, limit = t["measured"], t["limit"]
        else:
            digits = 0 if t["unit"] == "%" else 2
            measured = fmt(t["measured"], digits, t["unit"] if t["unit"] != "x" else "×")
            limit = ("≤ " if t["at_most"] else "≥ ") + f"{t['limit']:g}" + (t["unit"] if t["unit"] != "x" else "×")
        lines.append(f"| {t['target']} | {measured} | {limit} | {verdict(t['met'])} |")

    if tr := results.get("trainers"):
        lines += ["", f"## Trainers against the tutorial's loops ({m['settings']['steps']} steps, logger=none)", "",
                  "| trainer | tutorial loop | trainer loop s | tutorial loop s | ratio | whole train() call s | "
                  "final loss trainer / tutorial |", "|---|---|---:|---:|---:|---:|---|"]
        for name, r in tr.items():
            lines.append(
                f"| {name} | {r['tutorial']}.py | {fmt(r['loop_s']['trainer'], 3)} | {fmt(r['loop_s']['tutorial'], 3)}"
                f" | {fmt(r['ratio'])}× | {fmt(r['trainer_call_s'], 3)} | "
                f"{r['final_loss']['trainer']:.4g} / {r['final_loss']['tutorial']:.4g} |")
            if "progress_bar_ratio" in r:
                lines.append(f"| {name} + progress bar | {r['tutorial']}.py | "
                             f"{fmt(r['loop_s']['trainer_progress_bar'], 3)} | {fmt(r['loop_s']['tutorial'], 3)} | "
                             f"{fmt(r['progress_bar_ratio'])}× | – | – |")

    if ml := results.get("mlflow_loop"):
        lines += ["", "## MLflow: the loop with every step logged", "",
                  "| trainer (experiment) | loop logger=none s | loop logger=mlflow s | ratio | per step ms | "
                  "flush_every |", "|---|---:|---:|---:|---:|---:|"]
        for name, r in ml.items():
            lines.append(f"| {name} ({r['experiment']}) | {fmt(r['loop_none_s'], 3)} | {fmt(r['loop_mlflow_s'], 3)} | "
                         f"{fmt(r['ratio'])}× | {fmt(r['per_step_overhead_ms'], 3)} | {r['flush_every']} |")
    if fx := results.get("mlflow_fixed"):
        keys = sorted({k for r in fx["runs"] for k in r["breakdown"]})
        lines += ["", "## MLflow: fixed cost per run (one process, runs one after another as in a sweep)", "",
                  f"`import mlflow`: {fmt(fx['import_mlflow_s'])} s (counted in the first run). "
                  "Breakdown columns are the seconds inside each call (flush includes the in-loop flushes).", "",
                  "| run | fixed s | enter s | finish s | exit s | " + " | ".join(keys) + " |",
                  "|---|---:|---:|---:|---:|" + "---:|" * len(keys)]

        def fixed_row(label: str, r: dict[str, Any], fixed_s: float) -> str:
            p, b = r["phases"], r["breakdown"]
            return (f"| {label} | {fmt(fixed_s)} | {fmt(p['enter_s'])} | {fmt(p['finish_s'])} | {fmt(p['exit_s'])} | "
                    + " | ".join(fmt(b.get(k), 3) for k in keys) + " |")

        lines.append(fixed_row(f"first ({fx['first']['experiment']})", fx["first"], fx["first"]["fixed_s"]))
        for experiment, r in fx["later"].items():
            lines.append(fixed_row(f"later {experiment} (median of {r['runs']})", r, r["fixed_s"]))

    if st := results.get("startup"):
        lines += ["", "## Start-up (whole process)", ""]
        if "skipped" in st:
            lines.append(f"skipped: {st['skipped']}")
        else:
            lines += ["| process | median s |", "|---|---:|",
                      f"| `{st['command']}` | {fmt(st['ours_s'])} |",
                      f"| `{st['command_experiment']}` (like for like) | {fmt(st['ours_experiment_s'])} |",
                      f"| `{st['tutorial']}` | {fmt(st['tutorial_s'])} |",
                      f"| ratio (like for like in brackets) | {fmt(st['ratio'])}× ({fmt(st['ratio_experiment'])}×) |"]
    if imp := results.get("imports"):
        lines += ["", "## Heavy modules each trainer's process imports (compose + run.train, logger=none)", "",
                  "| trainer | heavy modules | process s |", "|---|---|---:|"]
        for name, r in imp.items():
            if isinstance(r, dict):
                lines.append(f"| {name} | {', '.join(r['heavy']) or 'none'} | {fmt(r['process_s'])} |")
    if sw := results.get("sweep"):
        lines += ["", "## The sweep in one command against the tutorial's processes", ""]
        if "skipped" in sw:
            lines.append(f"skipped: {sw['skipped']}")
        else:
            lines += ["| | s |", "|---|---:|", f"| `{sw['command']}` | {fmt(sw['sweep_s'], 1)} |",
                      f"| the {len(sw['experiments'])} tutorial scripts, one process each | "
                      f"{fmt(sw['tutorial_s'], 1)} |",
                      f"| ratio | {fmt(sw['ratio'])}× |"]
    if sc := results.get("scaling"):
        lines += ["", f"## Scaling on {sc['device']}: N = D_in = H, D_out = {sc['d_out']}, {sc['dtype']}", "",
                  f"FLOPs per step = {sc['flops_formula']}. Steady-state step time (median of the intervals between "
                  "steps); % is of the bare torch.mm chain's rate measured in the same run.", "",
                  "| size | " + " | ".join(dict.fromkeys(r["impl"] for r in sc["rows"])) + " |",
                  "|---:|" + "---|" * len(dict.fromkeys(r["impl"] for r in sc["rows"]))]
        for size in dict.fromkeys(r["size"] for r in sc["rows"]):
            cells = [f"{fmt(r['step_ms'], 2)} ms, {fmt(r['gflops'], 1)} GF/s ({fmt(r['pct_of_mm'], 0)}%)"
                     for r in sc["rows"] if r["size"] == size]
            lines.append(f"| {size} | " + " | ".join(cells) + " |")
    if cu := results.get("scaling_cuda"):
        lines += ["", f"CUDA: {cu.get('skipped') or 'see JSON'}"]
    if co := results.get("compile"):
        lines += ["", "## torch.compile of the Lightning model", ""]
        if "error" in co:
            lines.append(f"failed: {co['error']}")
        else:
            lines.append(f"N = D_in = H = {co['size']}: eager {fmt(co['eager_step_ms'], 1)} ms/step, compiled "
                         f"{fmt(co['compiled_step_ms'], 1)} ms/step (speedup {fmt(co['speedup'])}×; the first "
                         f"compiled step took {fmt(co['first_compiled_step_s'], 1)} s)")
    if errors := results.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {k}: {v}" for k, v in errors.items()]
    lines += ["", f"Reproduce: `{m['command']}`", ""]
    return "\n".join(lines)


def flat_ratios(results: dict[str, Any]) -> dict[str, float]:
    """The headline figures as MLflow metric names -> values (ratios, seconds, % of the mm chain)."""
    out: dict[str, float] = {}
    for name, r in results.get("trainers", {}).items():
        out[f"ratio/trainer/{name}"] = r["ratio"]
    for name, r in results.get("mlflow_loop", {}).items():
        out[f"ratio/mlflow_loop/{name}"] = r["ratio"]
    fx = results.get("mlflow_fixed", {})
    if "first" in fx:
        out["seconds/mlflow_fixed/first"] = fx["first"]["fixed_s"]
    for experiment, r in fx.get("later", {}).items():
        out[f"seconds/mlflow_fixed/later/{experiment}"] = r["fixed_s"]
    if "ratio" in results.get("startup", {}):
        out["ratio/startup/numpy"] = results["startup"]["ratio"]
    if "ratio" in results.get("sweep", {}):
        out["ratio/sweep"] = results["sweep"]["ratio"]
    sc = results.get("scaling", {})
    for r in sc.get("rows", []):
        if r["impl"] in TORCH_TRAINERS:
            out[f"pct_of_mm/{r['size']}/{r['impl']}"] = r["pct_of_mm"]
    return out


def log_to_mlflow(results: dict[str, Any], json_path: Path, md_path: Path, tracking_uri: str | None) -> str:
    """The benchmark as one run of experiment `benchmarks`: the headline figures as metrics, JSON and Markdown
    as artifacts. The store is the pipeline's (<cwd>/mlruns/mlflow.db unless --tracking-uri says)."""
    from omegaconf import OmegaConf

    from backproplab.tracking.store import open_store

    client, exp_id = open_store(OmegaConf.create({"tracking_uri": tracking_uri, "experiment_name": "benchmarks"}))
    run = client.create_run(exp_id, run_name=f"bench {results['meta']['mode']}",
                            tags={"mlflow.source.git.commit": results["meta"].get("git_commit") or ""})
    rid = run.info.run_id
    for k, v in asdict(Settings(**results["meta"]["settings"])).items():
        client.log_param(rid, k, str(v))
    for k, v in flat_ratios(results).items():
        if math.isfinite(v):
            client.log_metric(rid, k, v)
    client.log_artifact(rid, str(json_path))
    client.log_artifact(rid, str(md_path))
    client.set_terminated(rid, "FINISHED")
    return rid


# -- the command line ------------------------------------------------------------------------------------------

SECTIONS = ("trainers", "mlflow", "startup", "imports", "sweep", "scaling", "compile")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench.py", description="Hold every trainer, MLflow and start-up against the tutorial's own code.")
    p.add_argument("--quick", action="store_true", help="CI settings: tiny steps and sizes, a one-job sweep")
    p.add_argument("--out", type=Path, default=Path("bench-results/bench.json"), help="the JSON (and .md beside it)")
    p.add_argument("--only", default=",".join(s for s in SECTIONS if s != "compile"),
                   help=f"comma-separated sections to run (of {', '.join(SECTIONS)})")
    p.add_argument("--steps", type=int, help="training steps of the loop comparisons (default 500)")
    p.add_argument("--repeats", type=int, help="measured rounds per comparison (default 5)")
    p.add_argument("--sizes", help="scaling sizes, comma-separated (default 256,1024,4096)")
    p.add_argument("--no-sweep", action="store_true", help="skip the nine-experiment sweep")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile at the largest size (slow)")
    p.add_argument("--threads", type=int,
                   help="set OMP/OpenBLAS/MKL threads (numpy, torch; also in the processes it starts): on a "
                        "loaded machine multi-threaded BLAS on the tutorial's tiny matrices stalls on every call")
    p.add_argument("--seed-dir", help="the tutorial's scripts (default: shared/seed beside or inside the repo)")
    p.add_argument("--mlflow", action="store_true", help="log the benchmark as a run of experiment `benchmarks`")
    p.add_argument("--tracking-uri", help="the store for --mlflow (default: <cwd>/mlruns/mlflow.db)")
    args = p.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {', '.join(sorted(unknown))}")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    s = QUICK if args.quick else Settings()
    if args.steps:
        s = replace(s, steps=args.steps)
    if args.repeats:
        s = replace(s, repeats=args.repeats, mlflow_repeats=args.repeats, process_repeats=args.repeats)
    if args.sizes:
        s = replace(s, sizes=tuple(int(v) for v in args.sizes.split(",")))
    if args.no_sweep:
        s = replace(s, sweep=())
    if args.compile:
        s = replace(s, compile=True)
    return s


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_child"]:
        return child_main(argv[1:])
    args = parse_args(argv)
    if args.threads:  # before numpy or torch is imported; the processes started below inherit it
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    s = settings_from(args)
    sections = set(args.only.split(",")) | ({"compile"} if s.compile else set())
    seed = find_seed_dir(args.seed_dir)
    start = time.perf_counter()
    meta: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "mode": "quick" if args.quick else "default",
        "settings": asdict(s),
        "sections": sorted(sections),
        "seed_dir": str(seed) if seed else None,
        "threads": args.threads or "library defaults",
        "git_commit": git_commit(),
        "load_start": load(),
        "command": " ".join(["python scripts/bench.py", *argv]),
    }
    results: dict[str, Any] = {"meta": meta}
    errors: dict[str, str] = {}

    meta["load_samples"] = [meta["load_start"]]

    def section(key: str, fn: Callable[[], Any]) -> None:
        try:
            results[key] = fn()
        except Exception as e:  # one failed measurement must not lose the others
            errors[key] = f"{type(e).__name__}: {e}".strip()[:2000]
            print(f"[bench] {key} failed: {errors[key]}", file=sys.stderr, flush=True)
        meta["load_samples"].append(load())

    with tempfile.TemporaryDirectory(prefix="backproplab-bench-") as tmp_name:
        tmp = Path(tmp_name)
        # in-process first; TensorFlow last of them, so that its thread pools cannot touch torch's figures
        if "trainers" in sections:
            section("trainers", lambda: bench_trainers(s, [t for t in PAIRS if t != "tensorflow"]))
        if "mlflow" in sections:
            section("mlflow_loop", lambda: bench_mlflow_loop(s, s.mlflow_trainers, tmp))
        if "scaling" in sections:
            section("scaling", lambda: bench_scaling(s))
            import torch

            if torch.cuda.is_available():
                section("scaling_cuda", lambda: bench_scaling(s, device="cuda"))
            else:
                results["scaling_cuda"] = {"skipped": "no CUDA device"}
        if "compile" in sections:
            section("compile", lambda: bench_compile(s))
        if "trainers" in sections:
            section("trainers_tf", lambda: bench_trainers(s, ["tensorflow"]))
            results.setdefault("trainers", {}).update(results.pop("trainers_tf", {}))
        # fresh processes
        if "mlflow" in sections:
            section("mlflow_fixed", lambda: bench_mlflow_fixed(s, tmp))
        if "startup" in sections:
            section("startup", lambda: bench_startup(s, seed, tmp))
        if "imports" in sections:
            section("imports", lambda: bench_imports(s, tmp))
        if "sweep" in sections:
            section("sweep", lambda: bench_sweep(s, seed, tmp))

    if "trainers" in results:  # in the tutorial's order
        results["trainers"] = {k: results["trainers"][k] for k in PAIRS if k in results["trainers"]}
    meta["load_end"] = load()
    meta["duration_s"] = time.perf_counter() - start
    if "torch" in sys.modules:
        meta["torch"] = sys.modules["torch"].__version__
        meta["torch_threads"] = sys.modules["torch"].get_num_threads()
    results["targets"] = targets(results)
    results["ratios"] = flat_ratios(results)
    results["errors"] = errors
    md = markdown(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    md_path = args.out.with_suffix(".md")
    md_path.write_text(md)
    print(md)
    print(f"[bench] wrote {args.out} and {md_path}", file=sys.stderr)
    if args.mlflow:
        rid = log_to_mlflow(results, args.out, md_path, args.tracking_uri)
        print(f"[bench] logged as MLflow run {rid} in experiment benchmarks", file=sys.stderr)
    return 1 if errors else 0


def child_main(argv: Sequence[str]) -> int:
    """`python -m backproplab.bench _child <kind> ...`: a measurement that needs a fresh process."""
    kind, *rest = argv
    answer = _child_fixed(*rest) if kind == "fixed" else _child_imports(*rest)
    print(CHILD_MARK + json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
