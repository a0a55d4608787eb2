"""The progress line (issue 35): every trainer's run draws one line in a terminal, steps done of total, the loss and
steps/s, redrawn in place; nothing in a pipe; none of its own in a parallel sweep worker; a sweep says which job of
how many is running. The real CLI in a real pseudo-terminal with a size (stdout a tty, as a user's)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import TRAIN, Workspace, clean_env

from backproplab.trainers import registry

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# one drawing of the line: "train ━━━╸━━━  750/3000 loss 1.234e-05 1,800 steps/s 0:00:01" (the rate from the second)
FRAME = re.compile(r"train\s.*?(\d+)/(\d+)\s+loss (\S+)(?:\s+([\d,.]+) steps/s)?")
# the variables that would make rich decide for itself what the terminal is (its width, colours, interactivity)
RICH_ENV = ("COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


def in_terminal(cwd: Path, *overrides: str, timeout: float = 300) -> tuple[int, str]:
    """Run scripts/train.py with stdout and stderr on a pseudo-terminal of 24 rows x 120 columns (a bare pty is
    0x0); returns its exit code and everything it wrote, escape codes and carriage returns as they came."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    env = {k: v for k, v in clean_env().items() if k not in RICH_ENV}
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN), *overrides], cwd=cwd, stdin=slave, stdout=slave, stderr=slave,
        env={**env, "TERM": "xterm-256color"}, start_new_session=True,
    )
    os.close(slave)
    screen, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer has closed the terminal
                    break
                if not chunk:
                    break
                screen += chunk
            elif proc.poll() is not None:
                break
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        proc.kill()
        os.close(master)
    return proc.returncode, screen.decode(errors="replace")


def frames(screen: str) -> list[tuple[int, int, float, str | None]]:
    """Each drawing of the progress line, in order: (steps done, total, loss, steps/s or None)."""
    found = []
    for piece in re.split(r"[\r\n]", ANSI.sub("", screen)):
        if m := FRAME.search(piece):
            found.append((int(m[1]), int(m[2]), float(m[3]), m[4]))
    return found


def assert_one_line_redrawn(screen: str, total: int) -> None:
    """Drawn several times, counting up to ``total``, with the loss and (once measured) steps/s; redrawn in place:
    from its first drawing to its last, the line is rewritten after a carriage return, never on a new line."""
    drawn = frames(screen)
    assert len(drawn) >= 3, screen[-3000:]
    assert all(t == total for _, t, _, _ in drawn), drawn
    done = [d for d, _, _, _ in drawn]
    assert done == sorted(done) and done[-1] == total and any(1 < d < total for d in done), done
    assert any(rate for *_, rate in drawn), drawn  # steps/s, from the second redraw on
    text = ANSI.sub("", screen)
    first, last = text.index(f"/{total} loss"), text.rindex(f"{total}/{total} loss")
    between = text[first:last]
    assert between.count("\r") >= 2, between[-2000:]
    # what a run logs (Lightning as its fit starts, TensorFlow as it builds) comes before its first step
    assert "\n" not in between, between[-2000:]


# steps enough for a few redraws (four a second: each of these loops takes 1-3 s here), few enough to stay quick
TRAINERS = {"numpy": 3000, "autograd": 3000, "tensorflow": 3000, "jax": 3000, "lightning": 1000}


@pytest.mark.slow
@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_every_way_draws_one_progress_line_in_a_terminal(tmp_path: Path, trainer: str) -> None:
    if absent := registry.missing(trainer):
        pytest.skip(f"trainer={trainer} needs {', '.join(absent)}")
    total = TRAINERS[trainer]
    extra = ["trainer.checkpoint_every=0"] if registry.spec(trainer).checkpoints else []
    code, screen = in_terminal(tmp_path, f"trainer={trainer}", f"trainer.max_steps={total}", "logger=none", *extra)
    assert code == 0, ANSI.sub("", screen)[-3000:]
    assert_one_line_redrawn(screen, total)
    assert "Epoch" not in screen and "it/s" not in screen  # Lightning's own bar is not drawn as well


@pytest.mark.slow
def test_nothing_is_drawn_in_a_pipe_or_when_turned_off(ws: Workspace) -> None:
    """stdout a pipe: no line (auto); a terminal with trainer.progress_bar=false: none either; a pipe with true: the
    line all the same (forced), and a hand trainer takes the key like Lightning does."""
    piped = ws.train("trainer=numpy", "trainer.max_steps=2000", "logger=none")
    for text in (piped.stdout, piped.stderr):
        assert not frames(text) and "steps/s" not in text and "\r" not in text and "\x1b[" not in text, text[-2000:]
    code, screen = in_terminal(ws.path, "trainer=numpy", "trainer.max_steps=2000", "logger=none",
                               "trainer.progress_bar=false")
    assert code == 0 and not frames(screen) and "steps/s" not in screen, screen[-2000:]
    forced = ws.train("trainer=autograd", "trainer.max_steps=5", "logger=none", "trainer.progress_bar=true")
    assert frames(forced.stdout)[-1][:2] == (5, 5), forced.stdout[-2000:]


@pytest.mark.slow
def test_a_sweep_says_which_job_of_how_many(tmp_path: Path) -> None:
    """Hydra's basic launcher runs one job at a time in this process: each job's line follows its "job k/n" line.
    joblib's workers run side by side: they say which job they are, and draw nothing of their own."""
    sweep = ["-m", "trainer=numpy", "trainer.max_steps=1500", "seed=0,1", "logger=none"]
    code, screen = in_terminal(tmp_path, *sweep)  # the launcher's own output dir: multirun/<date>/<time>
    text = ANSI.sub("", screen)
    assert code == 0, text[-3000:]
    assert "[backproplab] job 1/2: seed=0" in text and "[backproplab] job 2/2: seed=1" in text, text[-3000:]
    second = text.index("job 2/2")
    assert frames(text[:second]) and frames(text[second:])  # each job its own line
    code, screen = in_terminal(tmp_path, *sweep, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                               f"hydra.sweep.dir={tmp_path / 'joblib'}")
    text = ANSI.sub("", screen)
    assert code == 0, text[-3000:]
    assert "job 1/2: seed=0" in text and "job 2/2: seed=1" in text, text[-3000:]
    assert not frames(text) and "steps/s" not in text, text[-3000:]


def test_the_sweep_size_from_its_overrides(tmp_path: Path) -> None:
    """The keys a sweep varies and its number of jobs: the product of its sweeps (the command line's, saved in
    multirun.yaml, and the sweeper's params), a trial budget for another sweeper, unknown for an interval."""
    from omegaconf import DictConfig, OmegaConf

    from backproplab.tracking.sweep import BASIC_SWEEPER, BASIC_SWEEPERS, is_basic, sweep_size

    def job(sweeper: dict, typed: list[str]) -> DictConfig:
        OmegaConf.save({"hydra": {"overrides": {"task": typed}}}, tmp_path / "multirun.yaml")
        return OmegaConf.create({"hydra": {"sweeper": sweeper, "sweep": {"dir": str(tmp_path)}}})

    basic = {"_target_": BASIC_SWEEPER, "params": {"model.hidden": "32,64"}}
    assert sweep_size(job(basic, ["optim=sgd,adam", "seed=range(3)", "trainer.max_steps=5"])) == (
        {"model.hidden", "optim", "seed"}, 12)
    assert sweep_size(job({"_target_": BASIC_SWEEPER}, ["seed=0,1", "seed=4"])) == (set(), None)  # later wins
    assert sweep_size(job({"_target_": BASIC_SWEEPER}, ["optim=glob(sgd*)", "seed=0,1"])) == ({"optim", "seed"}, None)
    # the project's own sweeper runs the basic sweeper's grid: counted the same (one job per combination)
    ours = {"_target_": "hydra_plugins.backproplab_sweeper.sweeper.BackproplabSweeper", "params": {"seed": "0,1"}}
    assert is_basic(ours) and ours["_target_"] in BASIC_SWEEPERS
    assert sweep_size(job(ours, ["optim=sgd,adam"])) == ({"optim", "seed"}, 4)
    # another sweep into another dir, in this process: its own count, never the one read before
    other = tmp_path / "other"
    other.mkdir()
    OmegaConf.save({"hydra": {"overrides": {"task": ["optim=sgd,adam,adagrad"]}}}, other / "multirun.yaml")
    config = OmegaConf.create({"hydra": {"sweeper": ours, "sweep": {"dir": str(other)}}})
    assert sweep_size(config) == ({"optim", "seed"}, 6)
    optuna = {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper", "n_trials": 20,
              "params": {"optim.lr": "tag(log, interval(1e-5, 1e-2))", "optim": "choice(sgd, adam)"}}
    (tmp_path / "multirun.yaml").unlink()
    config = OmegaConf.create({"hydra": {"sweeper": optuna, "sweep": {"dir": str(tmp_path)}}})
    assert sweep_size(config) == ({"optim.lr", "optim"}, 20)
