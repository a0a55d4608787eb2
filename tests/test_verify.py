"""verify (issue 3): every trainer computes the same gradients and loss curve in float64, and the check
fails when one of them does not."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from conftest import REPO

from backproplab import agreement, equivalence, verify
from backproplab.runtime import conf_dir
from backproplab.steps import Result
from backproplab.trainers import numpy as numpy_trainer
from backproplab.trainers import registry

VERIFY = REPO / "scripts" / "verify.py"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # whatever a trainer might write lands here, not in the repo


def test_all_trainers_agree_in_float64() -> None:
    """The real script as a user runs it: 500 steps, with and without biases."""
    proc = subprocess.run(
        [sys.executable, str(VERIFY)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "Traceback" not in proc.stderr
    assert out.count("reference") == 3 and "all trainers agree" in out  # two bias tables, the optimizer table
    optim_reference = registry.reference("optim_reference")
    for trainer, spec in registry.trainers().items():
        in_optimizer_table = trainer == optim_reference or len(spec.optims) > 1
        assert out.count(f"│ {trainer} ") == 2 + in_optimizer_table, trainer
    assert "optimizers against" in out and "│ adam" not in out  # adam is a column there, not a row
    assert "DISAGREES" not in out and "FAILED" not in out
    assert "bias=True" in out and "bias=False" in out and "grad b1" in out


def test_dynamic_net_agrees_and_tensorflow_is_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    assert verify.main(["--model", "dynamic", "--steps", "60", "--bias", "true"]) == 0
    out = capsys.readouterr().out
    assert "grad wm" in out and "grad bm" in out
    assert "skipped" in out and "all trainers agree" in out


def wrong_pass(params, x, repeats=0):
    """A test-only pass: the tutorial's two-layer net (bias-free), with grad_w1 off by a factor 1.001."""
    y_pred, backward = numpy_trainer.two_layer_net(params, x)

    def wrong(grad_y_pred):
        grads = backward(grad_y_pred)
        return {**grads, "w1": 1.001 * grads["w1"]}  # the deliberate mistake

    return y_pred, wrong


def test_a_wrong_gradient_fails_the_check(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setitem(numpy_trainer.PASSES, "sequential", wrong_pass)
    code = verify.main(["--trainers", "numpy,tensor", "--bias", "false", "--steps", "30"])
    out = capsys.readouterr().out
    assert code == 1, out
    numpy_row = next(line for line in out.splitlines() if "│ numpy " in line)
    tensor_row = next(line for line in out.splitlines() if "│ tensor " in line)
    assert "DISAGREES" in numpy_row and "1.0e-03" in numpy_row  # grad w1 off by 0.1%
    assert "ok" in tensor_row and "some trainers disagree" in out


def test_a_slightly_wrong_update_fails_on_the_loss_curve(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Right first-step gradients, but an update one part in a million too large: only the curve shows it."""
    real = numpy_trainer.train

    def skewed_lr(problem, settings, on_step) -> Result:
        return real(problem, dataclasses.replace(settings, lr=settings.lr * (1 + 1e-6)), on_step)

    monkeypatch.setattr(numpy_trainer, "train", skewed_lr)
    assert verify.main(["--trainers", "numpy", "--bias", "true", "--steps", "50"]) == 1
    numpy_row = next(line for line in capsys.readouterr().out.splitlines() if "│ numpy " in line)
    grads = numpy_row.split("│")[2:6]
    assert all(float(g) < 1e-10 for g in grads), numpy_row
    assert "DISAGREES" in numpy_row


def test_a_failing_trainer_fails_the_check(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def broken(problem, cfg, on_step) -> Result:
        raise RuntimeError("shape mismatch in the backward pass")

    monkeypatch.setattr(numpy_trainer, "train", broken)
    assert verify.main(["--trainers", "numpy", "--bias", "false", "--steps", "5"]) == 1
    assert "FAILED: RuntimeError: shape mismatch" in capsys.readouterr().out


def test_bad_arguments_exit_2() -> None:
    with pytest.raises(SystemExit) as e:
        verify.main(["--trainers", "numpy,caffe"])
    assert e.value.code == 2


def test_a_sweep_jobs_own_check_measures_what_verify_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """backproplab.agreement, which a sweep job logs as verify/grad_rel_diff: a right trainer's first step is
    autograd's to rounding, a wrong one's shows its error, and a model the reference cannot train has no check."""
    cfg = equivalence.compose_configs(["numpy"], ["logger=none", "model.bias=false"], conf_dir())["numpy"]
    assert agreement.first_step_agreement(cfg) < 1e-10
    # a Lightning job's config: its Trainer (trainer.pl) follows the float64, one-step keys the check sets
    lightning = equivalence.compose_configs(["lightning"], ["logger=none"], conf_dir())["lightning"]
    assert agreement.first_step_agreement(lightning) < 1e-10
    monkeypatch.setitem(numpy_trainer.PASSES, "sequential", wrong_pass)
    assert agreement.first_step_agreement(cfg.copy()) == pytest.approx(1e-3, rel=1e-3)  # grad_w1 x 1.001
    sine = ["logger=none", "data=sine", "model=poly_nn"]
    assert agreement.first_step_agreement(equivalence.compose_configs(["lightning"], sine, conf_dir())["lightning"]) \
        is None
