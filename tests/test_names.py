"""Run names that read (issue 36, item 5): a swept float shows a few significant digits, more only where two runs
would then read the same, and the params keep the full value; a joblib sweep that asks for more jobs than CPUs
says so once (item 8)."""

from __future__ import annotations

import pytest
from conftest import REPO, Workspace
from omegaconf import OmegaConf, open_dict

from backproplab.tracking import names, sweep

OPTUNA_LR = "1.1498870747119445e-05"  # an Optuna trial's value, as the issue quotes it


@pytest.mark.parametrize(("typed", "shown"), [
    (OPTUNA_LR, "1.15e-05"),
    ("0.0012345678", "0.00123"),
    ("1e-3", "1e-3"),  # no more digits than shown: as typed
    ("0.001", "0.001"),
    ("200", "200"),  # an integer is never rounded
    ("123456789", "123456789"),
    ("adam", "adam"),
    ("nan", "nan"),
    ("[1.23456,2]", "[1.23456,2]"),
])
def test_a_float_is_rounded_to_three_significant_digits(typed: str, shown: str) -> None:
    assert names.rounded(typed) == shown


def test_values_that_would_read_the_same_get_the_digits_that_tell_them_apart() -> None:
    values = ["1.1498e-05", "1.1502e-05", "0.0033333333", "1e-3", "0.0010001", "1e-3", "adam"]
    assert names.distinct(values) == ["1.1498e-05", "1.1502e-05", "0.00333", "1e-3", "0.0010001", "1e-3", "adam"]
    # 1e-3 and 0.001 are one value: neither needs more digits because of the other
    assert names.distinct(["1e-3", "0.001", "2.00001e-3"]) == ["1e-3", "0.001", "0.002"]


def test_distinct_keeps_many_close_values_apart() -> None:
    values = [repr(1e-4 * (1 + i * 1e-9)) for i in range(200)] + [repr(0.5 + i / 7) for i in range(200)]
    shown = names.distinct(values)
    assert len(set(shown)) == len(values)
    assert all(float(s) == pytest.approx(float(v), rel=1e-2) for s, v in zip(shown, values, strict=True))
    assert shown[-1] == "28.9"  # a value nothing is near keeps three digits


def cfg(preset: str | None = None):
    return OmegaConf.create({"preset": preset, "trainer": {"name": "lightning"}, "model": {"name": "sequential"},
                             "optim": {"name": "adam"}})


def test_an_optuna_trial_is_named_with_short_values() -> None:
    swept = ["optim", "optim.lr", "model.hidden"]
    overrides = ["optim=adam", f"optim.lr={OPTUNA_LR}", "model.hidden=200"]
    assert names.run_name(cfg(), overrides, swept) == "lightning-sequential-adam lr=1.15e-05 hidden=200"
    # a trial whose name another's would read as: the sweep's end names them together, with more digits until
    # they differ (sweep.rename_children)
    base, in_base = names.base_name(None, "lightning", "sequential", "adam")
    trials = [(base, in_base, {"optim": "adam", "optim.lr": lr, "model.hidden": "200"})
              for lr in (OPTUNA_LR, "1.1499e-05")]
    assert names.sweep_run_names(trials, swept) == ["lightning-sequential-adam lr=1.14989e-05 hidden=200",
                                                   "lightning-sequential-adam lr=1.1499e-05 hidden=200"]
    assert names.run_name(cfg("nn"), ["experiment=nn", "optim.lr=1e-3"], ["experiment", "optim.lr"]) == "nn lr=1e-3"


def test_a_sweeps_names_are_made_together_and_stay_distinct() -> None:
    base, in_base = names.base_name(None, "lightning", "sequential", "adam")
    runs = [(base, in_base, {"optim.lr": lr, "model.hidden": "200"})
            for lr in ("1.1498e-05", "1.1502e-05", "0.0031234", "1.1498e-05")]
    made = names.sweep_run_names(runs, ["optim.lr", "model.hidden"])
    assert made == [f"{base} lr=1.1498e-05 hidden=200", f"{base} lr=1.1502e-05 hidden=200",
                    f"{base} lr=0.00312 hidden=200", f"{base} lr=1.1498e-05 hidden=200"]  # the same value: one name


def test_a_runs_overrides_tag_reads_back_into_overrides() -> None:
    assert sweep.overrides_of("optim=adam +data.formula=sin(x) + 1 optim.lr=0.1") == [
        "optim=adam", "+data.formula=sin(x) + 1", "optim.lr=0.1"]
    assert sweep.overrides_of("") == []


def composed(*overrides: str, task: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        config = compose("config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(config):
        config.hydra.overrides.task = task  # a sweep's overrides, which compose itself refuses
    return config


def test_more_joblib_jobs_than_cpus_is_said_in_one_line() -> None:
    cpus = sweep.usable_cpus()
    many = composed("hydra/launcher=joblib", f"hydra.launcher.n_jobs={cpus + 1}", task=[f"seed=range(0,{cpus + 2})"])
    line = sweep.crowding(many)
    assert line is not None and "\n" not in line
    assert f"hydra.launcher.n_jobs={cpus + 1} runs {cpus + 1} jobs at a time on {cpus} CPU" in line
    # joblib's default (one job per CPU), no more jobs than CPUs, or another launcher: nothing to say
    assert sweep.crowding(composed("hydra/launcher=joblib", task=[f"seed=range(0,{cpus + 2})"])) is None
    few = composed("hydra/launcher=joblib", f"hydra.launcher.n_jobs={cpus + 1}", task=[f"seed=range(0,{cpus})"])
    assert sweep.crowding(few) is None
    assert sweep.crowding(composed(task=[f"seed=range(0,{cpus + 2})"])) is None


def test_a_sweep_ends_with_names_that_tell_its_runs_apart(ws: Workspace) -> None:
    """Two learning rates that read 1.15e-05 at three digits: each job named itself so, alone; the sweep ends with
    names that tell them apart, which its report's table shows too."""
    lrs = ["1.1498e-05", "1.1502e-05"]
    proc = ws.train("-m", "trainer=numpy", "trainer.max_steps=5", f"optim.lr={','.join(lrs)}")
    children = ws.runs(children_only=True)
    assert sorted(r.data.params["optim.lr"] for r in children) == lrs  # the params keep the value as typed
    assert sorted(r.info.run_name for r in children) == [f"numpy-sequential-sgd lr={lr}" for lr in lrs]
    assert "2 finished" in proc.stdout
    report = next(ws.path.glob("multirun/*/*/report/report.md")).read_text()
    assert all(f"numpy-sequential-sgd lr={lr} (" in report for lr in lrs)
