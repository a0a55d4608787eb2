"""Reliability (issue 6): bad input, divergence, interruption, store faults, resume, rerun, secrets."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, TRAIN, Workspace, gpu_available, wait_for

# (overrides, a text the one-line error must contain)
BAD_INPUTS = [
    (["model=nonexistent"], "nonexistent"),
    (["loss=huber"], "huber"),
    (["nosuchkey=1"], "nosuchkey"),
    (["data.n=0"], "data.n"),
    (["data.d_in=-5"], "data.d_in"),
    (["data.d_out=0"], "data.d_out"),
    (["data.dtype=int8"], "data.dtype"),
    (["model.hidden=0"], "model.hidden"),
    (["model=dynamic", "model.max_repeats=-1"], "model.max_repeats"),
    (["model.init=zeros"], "model.init"),
    (["model.bias=maybe"], "model.bias"),
    (["optim.lr=0"], "optim.lr"),
    (["optim.lr=-1"], "optim.lr"),
    (["optim.lr=nan"], "optim.lr"),
    (["optim.lr=inf"], "optim.lr"),
    (["optim.lr=abc"], "optim.lr"),
    (["optim=sgd_momentum", "optim.momentum=1.5"], "optim.momentum"),
    (["trainer.max_steps=0"], "trainer.max_steps"),
    (["trainer.accelerator=tpu"], "trainer.accelerator"),
    (["trainer.precision=7"], "trainer.precision"),
    (["trainer.devices=0"], "trainer.devices"),
    (["seed=abc"], "seed"),
    (["logger.flush_every=0"], "logger.flush_every"),
    (["loss.reduction=none"], "loss.reduction"),
    (["trainer.precision=64-true"], "data.dtype=float64"),
    (["trainer.num_nodes=0"], "trainer.num_nodes"),
    (["trainer.pl.max_steps=10"], "trainer.pl.max_steps follows trainer.max_steps"),  # Lightning's, set through ours
    (["trainer.log_every_n_steps=1"], "trainer.log_every_n_steps"),  # a key no trainer has any more
    (["trainer=numpy", "trainer.progress_bar=maybe"], "trainer.progress_bar"),  # a hand trainer's too
    (["+optim.lrr=1e-3"], "did you mean optim.lr="),  # Hydra's own hint for optim.lrr=... adds a new key
    (["+trainer.max_step=5"], "did you mean trainer.max_steps="),
    (["experiment=nmupy"], "experiment=nmupy is not an option"),  # a preset that does not exist: no default run
    (["hparams_search=optunaa"], "hparams_search=optunaa is not an option"),
    (["-m", "optim=sgd,adamw"], "optim=adamw is not an option"),
    (["trainer.progress_bar=maybe"], "trainer.progress_bar"),
    (["+rerun=0123456789abcdef", "logger=none"], "logger=mlflow"),
    (["trainer=numpy", "trainer.accelerator=gpu"], "trainer.accelerator"),
    (["trainer=numpy", "optim=adam"], "optim=adam"),
    (["trainer=numpy", "optim.momentum=0.9"], "optim.momentum"),
    (["trainer=numpy", "trainer.precision=bf16-mixed"], "trainer.precision"),
    (["trainer=tensorflow", "model=dynamic"], "model=dynamic"),
    (["ckpt_path=/nonexistent/last.ckpt"], "ckpt_path"),
    (["+rerun=0123456789abcdef"], "rerun"),
    (["logger.tracking_uri=http://127.0.0.1:{closed_port}"], "logger.tracking_uri"),  # nothing listens there
    # Hydra's own refusals, made one line (backproplab/cli.py), also in a multirun before its parent run exists
    (["nosuchkey=1"], "nosuchkey is not a key of the config"),
    (["trainer.max_step=3"], "trainer.max_step is not a key of the config"),
    (["-m", "nosuchkey=1,2"], "nosuchkey is not a key of the config"),
    (["-m", "trainer.max_steps=2", "optim.lrr=1e-3,1e-4"], "optim.lrr is not a key of the config"),
    (["optim.lr=[1"], "'[1'"),
    (["trainer.divergence_factor=1"], "trainer.divergence_factor"),
    (["trainer.checkpoint_every=-1"], "trainer.checkpoint_every"),
    (["trainer.keep_checkpoints=0"], "trainer.keep_checkpoints"),
    (["logger.flush_seconds=0"], "logger.flush_seconds"),
    (["logger.server_timeout=-1"], "logger.server_timeout"),
    (["trainer.threads=0"], "trainer.threads=0 is invalid: expected auto or an integer >= 1"),
    (["trainer.threads=many"], "trainer.threads"),
    (["trainer.module=backproplab.trainers.numpy"], "trainer.module"),
    # the sine edition and the new trainers
    (["data=sine"], "model=sequential fits data=random, not data=sine"),
    (["experiment=sine_tensor", "model=legendre3"], "model=legendre3 is not supported by trainer=tensor"),
    (["experiment=sine_module", "trainer=tf2"], "model=poly3 is not supported by trainer=tf2"),
    (["experiment=sine_numpy", "model.init=fixed"], "model.init=fixed needs model.start"),
    (["experiment=sine_dynamic", "model.max_extra_terms=-1"], "model.max_extra_terms"),
    (["trainer=jax", "optim=adam", "+optim.optimizer.weight_decay=1e-4"], "optim.optimizer.weight_decay"),
]
if not gpu_available():
    BAD_INPUTS.append((["trainer.accelerator=gpu"], "no CUDA device is available"))


def assert_clean_failure(ws: Workspace, proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert needle in proc.stderr, proc.stderr[-3000:]
    if ws.db.exists():
        assert all(r.info.status != "RUNNING" for r in ws.runs())


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with the experiment and no run, made once: each bad-input case starts from a copy of it, so
    that "no run was created" is something the test observes, not the absence of a database."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").create_experiment("backproplab")
    return path


@pytest.mark.parametrize("overrides,needle", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line(
    ws: Workspace, empty_store: Path, closed_port: int, overrides: list[str], needle: str
) -> None:
    """Refused with exit != 0 (2 for a config, 1 for a store), exactly one line on stderr (no traceback, no
    warning), and no run in the store."""
    import shutil

    shutil.copy(empty_store, ws.db)
    overrides = [o.format(closed_port=closed_port) if "{closed_port}" in o else o for o in overrides]
    flags = [o for o in overrides if o.startswith("-")]  # -m comes first, as a user types it
    values = [o for o in overrides if not o.startswith("-")]
    proc = ws.train(*flags, "trainer.max_steps=5", *values, check=False)  # the bad value comes last and wins
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]
    assert ws.runs() == [], [r.info.run_name for r in ws.runs()]


def test_store_path_that_cannot_be_created(ws: Workspace) -> None:
    blocker = ws.path / "a_file"
    blocker.write_text("not a directory")
    proc = ws.train(f"logger.tracking_uri=sqlite:///{blocker}/sub/mlflow.db", "trainer.max_steps=5", check=False)
    assert_clean_failure(ws, proc, "cannot open the MLflow store")


def test_store_file_that_is_not_sqlite(ws: Workspace) -> None:
    ws.db.write_text("this is not a database\n" * 10)
    proc = ws.train("trainer.max_steps=5", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "not a sqlite database" in proc.stderr


def test_locked_store(ws: Workspace) -> None:
    ws.train("trainer.max_steps=2", "logger=mlflow")  # create it
    holder = sqlite3.connect(ws.db, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        proc = ws.train("trainer.max_steps=5", check=False)
    finally:
        holder.rollback()
        holder.close()
    assert_clean_failure(ws, proc, "cannot open the MLflow store")
    assert "locked" in proc.stderr


def test_a_store_locked_mid_run_is_waited_for_and_loses_nothing(ws: Workspace) -> None:
    """A second connection holds sqlite's write lock past MLflow's 20 s busy timeout while a run is logging:
    the run's write times out, is retried (its log says so), and the run records every step and its end."""
    from conftest import clean_env

    ws.train("trainer=numpy", "trainer.max_steps=2")  # the store exists, with one run
    steps = 20000
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN), "trainer=numpy", f"trainer.max_steps={steps}", "logger.flush_seconds=0.2"],
        cwd=ws.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
    )
    try:
        wait_for(proc, lambda: len(ws.runs()) == 2 and ws.losses(ws.runs()[-1].info.run_id), "logging did not begin")
        holder = sqlite3.connect(ws.db)
        holder.execute("BEGIN IMMEDIATE")  # the write lock; readers go on
        try:
            time.sleep(23)  # > MLflow's PRAGMA busy_timeout = 20000
        finally:
            holder.rollback()
            holder.close()
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "the MLflow store is locked by another writer" in out + err  # the lock was really hit, and retried
    run = ws.runs()[-1]
    assert run.info.status == "FINISHED" and run.data.metrics["final_loss"] > 0
    losses = ws.losses(run.info.run_id)
    assert len(losses) == steps
    assert sorted(m.step for m in ws.client().get_metric_history(run.info.run_id, "train/loss")) == list(range(steps))


def test_logger_none_works_even_with_a_broken_store_setting(ws: Workspace) -> None:
    ws.train("logger=none", "trainer.max_steps=3")


def test_divergence_fails_the_run_and_keeps_the_steps_before(ws: Workspace) -> None:
    # the growth check off: the run goes on until the loss is NaN/inf
    proc = ws.train("optim.lr=10", "trainer.max_steps=200", "trainer.divergence_factor=null", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "diverged at step" in proc.stderr
    (run,) = ws.runs()
    assert run.info.status == "FAILED"
    reason = run.data.tags["failure_reason"]
    step = int(reason.split("step ")[1].split(":")[0])
    assert step >= 1 and ("nan" in reason or "inf" in reason)
    assert [m.step for m in ws.client().get_metric_history(run.info.run_id, "train/loss")] == list(range(step))


def test_divergence_guard_works_for_every_trainer(ws: Workspace) -> None:
    trainers = ("numpy", "tensor", "autograd", "function", "tensorflow", "lightning")
    proc = ws.train("-m", f"trainer={','.join(trainers)}", "optim.lr=10", "trainer.max_steps=100", check=False)
    assert proc.returncode != 0 and "6 failed" in proc.stdout
    runs = ws.runs(children_only=True)
    assert sorted(r.data.params["trainer.name"] for r in runs) == sorted(trainers)
    for run in runs:
        assert run.info.status == "FAILED"
        reason = run.data.tags["failure_reason"]
        assert "diverged at step" in reason, (run.info.run_name, reason)
        step = int(reason.split("step ")[1].split(":")[0])
        assert len(ws.losses(run.info.run_id)) == step, run.info.run_name


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_marks_killed_and_keeps_history(ws: Workspace, sig: int, code: int) -> None:
    ws.train("trainer.max_steps=1", "trainer.checkpoint_every=0")  # the store exists before we poll it
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN), "trainer.max_steps=1000000", "logger.flush_every=50", "logger.flush_seconds=600"],
        cwd=ws.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(proc, lambda: len(ws.runs()) == 2 and ws.losses(ws.runs()[1].info.run_id), "no step was recorded")
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr
    _, run = ws.runs()  # a fresh client can read the store
    assert run.info.status == "KILLED"
    steps = [m.step for m in ws.client().get_metric_history(run.info.run_id, "train/loss")]
    assert len(steps) >= 50 and steps == list(range(len(steps)))


class SignalledWhileCollected:
    """An object whose finalizer is running when a SIGTERM comes, as matplotlib's and SQLAlchemy's weakref
    callbacks often are: Python drops the exception the handler raises there ("Exception ignored")."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGTERM)


@pytest.fixture
def handlers() -> Iterator[None]:
    from backproplab import signals

    restore = signals.install()
    yield
    restore()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop this test is about
def test_a_sigterm_a_finalizer_drops_still_stops_the_run(ws: Workspace, handlers: None) -> None:
    """Such a SIGTERM let the run go on and finish (7 of 400 sent at random moments of an in-process run). It
    now stops the run at its next step; and a record that closes with no step after it is KILLED, not
    FINISHED, with the steps before it kept. A real signal, finalizer and sqlite store, read back."""
    from hydra import compose, initialize_config_dir

    from backproplab import signals
    from backproplab.steps import Recorder
    from backproplab.tracking.run import MlflowTracker

    rec = Recorder()
    rec.on_step(0, 1.0)
    SignalledWhileCollected()  # collected at once, its exception dropped
    with pytest.raises(signals.Terminated):
        rec.on_step(1, 0.5)
    assert rec.losses == [1.0]

    signals.install()  # a new run's state (the fixture puts back what was there before the first)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["trainer=numpy", f"logger.tracking_uri={ws.uri}"])
    with pytest.raises(signals.Terminated), MlflowTracker(cfg) as tracker:
        tracker.on_step(0, 1.0)
        tracker.on_step(1, 0.5)
        SignalledWhileCollected()
    (run,) = ws.runs()
    assert run.info.status == "KILLED"
    assert ws.losses(run.info.run_id) == [1.0, 0.5]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_putting_the_handlers_back_forgets_the_signal(handlers: None) -> None:
    """Tests and an in-process sweep's later jobs train in this process after it: a signal noted here must not
    stop them."""
    from backproplab import signals
    from backproplab.steps import Recorder

    restore = signals.install()
    SignalledWhileCollected()
    assert isinstance(signals.received(), signals.Terminated)
    restore()
    assert signals.received() is None
    Recorder().on_step(0, 1.0)


def test_ctrl_c_in_the_middle_of_a_write_leaves_the_store_unlocked(ws: Workspace) -> None:
    """A run writing every step spends most of its time in database writes, so a Ctrl-C lands in one. A write
    cut short used to keep sqlite's write lock in the process itself: its KILLED status then waited 20 s per try
    (about half of these interrupts; a sweep in CI did not exit in 2 minutes). Four interrupts at different
    moments: none meets a locked store, and no step is written twice."""
    ws.train("trainer.max_steps=1", "trainer.checkpoint_every=0")  # the store exists before we poll it
    for n, delay in enumerate((0.0, 0.05, 0.1, 0.2), start=2):
        proc = subprocess.Popen(
            [sys.executable, str(TRAIN), "trainer=numpy", "trainer.max_steps=1000000", "logger.flush_seconds=0.001"],
            cwd=ws.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            wait_for(proc, lambda n=n: len(ws.runs()) == n and ws.losses(ws.runs()[-1].info.run_id), "no step recorded")
            time.sleep(delay)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=300)  # a bound that catches a hang, not a speed
        finally:
            proc.kill()
        assert proc.returncode == 130, err[-2000:]
        assert "database is locked" not in out + err, (out + err)[-3000:]
        run = ws.runs()[-1]
        assert run.info.status == "KILLED"
        steps = [m.step for m in ws.client().get_metric_history(run.info.run_id, "train/loss")]
        assert steps and sorted(steps) == list(range(len(steps)))


@pytest.mark.parametrize("optim", ["sgd", "sgd_momentum", "adam"])
def test_resume_continues_the_curve_exactly(ws: Workspace, optim: str) -> None:
    """Bit for bit: the checkpoint holds the weights and the optimizer's state (momentum buffers, Adam's moments
    and step count), and the dynamic net's schedule is drawn from the seed, so steps 100..299 of the resumed run
    are the very numbers of the uninterrupted one. One thread in both runs: auto chooses from the load at each
    run's start, and a BLAS sum in another order changes the last digit (issue 34's rule for curve tests)."""
    ws.train(
        "trainer.max_steps=300", "trainer.checkpoint_every=100", "trainer.keep_checkpoints=4", "model=dynamic",
        f"optim={optim}", "trainer.threads=1",
    )
    (full,) = ws.runs()
    ckpt_dir = Path(full.data.params["trainer.checkpoint_dir"])
    names = {p.name for p in ckpt_dir.iterdir()}
    assert names == {"step_000100.ckpt", "step_000200.ckpt", "step_000300.ckpt", "last.ckpt"}
    artifacts = {a.path for a in ws.client().list_artifacts(full.info.run_id, "checkpoints")}
    assert artifacts == {f"checkpoints/{name}" for name in names}
    ws.train("trainer.max_steps=300", "model=dynamic", f"optim={optim}", "trainer.threads=1",
             f"ckpt_path={ckpt_dir / 'step_000100.ckpt'}")
    resumed = ws.runs()[-1]
    history = ws.client().get_metric_history(resumed.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(100, 300))
    original = ws.losses(full.info.run_id)
    continued = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert continued == original[100:]


def test_resume_from_a_finished_checkpoint_is_refused(ws: Workspace) -> None:
    ws.train("trainer.max_steps=20", "trainer.checkpoint_every=10")
    (run,) = ws.runs()
    last = Path(run.data.params["trainer.checkpoint_dir"]) / "last.ckpt"
    proc = ws.train("trainer.max_steps=20", f"ckpt_path={last}", check=False)
    assert_clean_failure(ws, proc, "leaves nothing to train")
    assert len(ws.runs()) == 1


# what Lightning would print that says nothing about a run here: its banners and tips, its end-of-fit and restore
# lines, and its warnings that do not apply (srun where Slurm is installed, checkpoints after the update, LeafSpec)
LIGHTNING_NOISE = ("GPU available", "TPU available", "Tip:", "`Trainer.fit` stopped", "Restoring states",
                   "weights_only", "srun", "manual optimization", "LeafSpec", "ended before the epoch ended")


def test_lightning_prints_nothing_that_says_nothing_here(ws: Workspace) -> None:
    """A run that keeps checkpoints, a resume from one of them mid-run and a run on ddp_spawn's processes (which
    start with Python's default warning filters) print none of Lightning's noise, and their curves are whole."""
    keys = ("trainer.max_steps=30", "trainer.checkpoint_every=10", "trainer.keep_checkpoints=3")
    first = ws.train(*keys)
    ckpt = Path(ws.runs()[0].data.params["trainer.checkpoint_dir"]) / "step_000020.ckpt"
    resumed = ws.train(*keys, f"ckpt_path={ckpt}")
    spawned = ws.train(*keys, "accelerator=ddp_cpu")
    for proc in (first, resumed, spawned):
        out = proc.stdout + proc.stderr
        assert not [n for n in LIGHTNING_NOISE if n in out], out[-3000:]
    for proc in (first, resumed, spawned):  # nor any other warning of Lightning's: not the resume's "dirpath has
        assert "/lightning/" not in proc.stderr, proc.stderr[-3000:]  # changed", which asks nothing of the user
        assert "dirpath has changed" not in proc.stderr, proc.stderr[-3000:]
    assert [len(ws.losses(run.info.run_id)) for run in ws.runs()] == [30, 10, 30]


def test_rerun_reproduces_the_curve_and_takes_overrides(ws: Workspace) -> None:
    ws.train("model=dynamic", "optim=adam", "seed=3", "trainer.max_steps=40")
    (first,) = ws.runs()
    ws.train(f"+rerun={first.info.run_id}")
    ws.train(f"+rerun={first.info.run_id}", "optim.lr=1e-3")
    refused = ws.train(f"+rerun={first.info.run_id}", "+optim.nosuchkey=1", check=False)
    assert_clean_failure(ws, refused, "optim.nosuchkey")
    _, same, changed = ws.runs()[:3]
    assert same.data.params["model.name"] == "dynamic" and same.data.params["seed"] == "3"
    assert ws.losses(same.info.run_id) == ws.losses(first.info.run_id)
    assert changed.data.params["optim.lr"] == "0.001"
    assert ws.losses(changed.info.run_id) != ws.losses(first.info.run_id)


def test_four_processes_write_to_one_fresh_store(ws: Workspace) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, str(TRAIN), "trainer.max_steps=60", f"seed={i}", "logger.flush_every=10"],
            cwd=ws.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(4)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert "database is locked" not in err
    runs = ws.runs()
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert all(len(ws.losses(r.info.run_id)) == 60 for r in runs)


def test_no_secrets_in_the_record() -> None:
    from omegaconf import OmegaConf

    from backproplab.runtime import mask_secrets
    from backproplab.tracking.params import flatten, resolved_yaml

    uri = "https://alice:s3cr3t@mlflow.example.org:5000/?token=abc123"
    assert "s3cr3t" not in mask_secrets(uri) and "abc123" not in mask_secrets(uri)
    cfg = OmegaConf.create({"logger": {"name": "mlflow", "tracking_uri": uri}, "seed": 0})
    assert "s3cr3t" not in str(flatten(cfg)) and "abc123" not in str(flatten(cfg))
    assert "s3cr3t" not in resolved_yaml(cfg)
    assert mask_secrets("https://ghp_abc123@host/x") == "https://***@host/x"
    assert mask_secrets("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    # a whole file (multirun.yaml): a value ends at whitespace, and the lines after it stay
    text = "    - ?token=abc123\n  help: '[key=value ...]'\n  overrides:\n    task:\n    - seed=0,1\n"
    assert mask_secrets(text) == text.replace("abc123", "***").replace("key=value", "key=***")


def test_progress_bar_in_a_terminal_and_ctrl_c_there(ws: Workspace) -> None:
    """In a real pseudo-terminal (stdout a tty, so progress_bar=auto draws the progress line), the line shows
    the step count and the loss; the terminal's own Ctrl-C (the byte 0x03, turned into SIGINT by the line
    discipline for the foreground process group) ends the run KILLED with its steps kept and exit 130."""
    import fcntl
    import os
    import pty
    import re
    import select
    import struct
    import termios

    from conftest import clean_env

    ws.train("trainer.max_steps=1", "trainer.checkpoint_every=0")  # the store exists before we poll it
    master, slave = pty.openpty()
    # a terminal has a size (a bare pty's is 0x0): 24 rows, 120 columns
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))

    def controlling_terminal() -> None:  # runs in the child after setsid(): the pty becomes its terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        # 50,000 steps: a run that is still training when Ctrl-C comes
        [sys.executable, str(TRAIN), "trainer=lightning", "trainer.max_steps=50000", "logger.flush_seconds=0.5"],
        cwd=ws.path, stdin=slave, stdout=slave, stderr=slave, env={**clean_env(), "TERM": "xterm-256color"},
        start_new_session=True, preexec_fn=controlling_terminal,
    )
    os.close(slave)
    screen = b""

    def read_until(done, seconds: float) -> None:
        nonlocal screen
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:
            if select.select([master], [], [], 1)[0]:
                try:
                    screen += os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    return

    def draws() -> list[str]:  # the progress line as drawn, each time: "train ━━╸━━ 1234/50000 loss 0.01 ..."
        return [d.decode(errors="replace") for d in screen.split(b"\r") if b"train" in d and b" loss " in d]

    try:
        # redraws of the line (four a second), each with the step count and the loss, until 1,000 steps are done
        read_until(lambda: len(draws()) >= 2 and re.search(r"\d{4,}/50000", draws()[-1]) is not None, 180)
        assert len(draws()) >= 2, screen[-3000:].decode(errors="replace")
        assert "/50000" in draws()[-1] and "steps/s" in draws()[-1], draws()[-1]
        os.write(master, b"\x03")  # Ctrl-C, typed
        read_until(lambda: proc.poll() is not None, 120)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        os.close(master)
    text = screen.decode(errors="replace")
    assert proc.returncode == 130, text[-3000:]
    assert "Traceback" not in text and "interrupted: metrics so far are recorded" in text
    _, run = ws.runs()
    assert run.info.status == "KILLED"
    steps = [m.step for m in ws.client().get_metric_history(run.info.run_id, "train/loss")]
    assert len(steps) >= 1000 and steps == list(range(len(steps)))
