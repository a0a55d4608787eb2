"""The comparison report (issue 4, item 5): real sweeps through the CLI, read back from the real sqlite store."""

from __future__ import annotations

import csv
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, Workspace

from backproplab.tracking.report import ReportResult, differing_labels, main, make_report

REPORT = REPO / "scripts" / "report.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FILES = {"loss_curves.png", "report.md", "report.csv", "groups.csv", "contrasts.csv"}
ARTIFACTS = {f"report/{name}" for name in FILES}


def only_parent(ws: Workspace) -> str:
    (parent,) = [r.info.run_id for r in ws.runs() if "mlflow.parentRunId" not in r.data.tags]
    return parent


@dataclass
class Sweep:
    ws: Workspace
    parent: str


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Sweep]:
    """Two real multiruns, each in its own store, run side by side to halve the wait: "grid" (2 optims x
    2 models, 4 runs) and "optims" (2 optimizers, nothing else differs)."""
    # trainer.threads is left at auto, settled once per sweep from the CPUs idle at its start: jobs whose work per
    # step differs can still record different counts (1 and 2), and a label must never name it
    overrides = {
        "grid": ("-m", "optim=sgd,adam", "model=sequential,custom", "trainer.max_steps=20"),
        "optims": ("-m", "optim=sgd,adam", "trainer.max_steps=5"),
    }
    spaces = {name: Workspace(tmp_path_factory.mktemp(name)) for name in overrides}
    with ThreadPoolExecutor(len(spaces)) as pool:  # each thread waits on its own subprocess
        for job in [pool.submit(spaces[n].train, *o) for n, o in overrides.items()]:
            job.result()
    return {name: Sweep(ws, only_parent(ws)) for name, ws in spaces.items()}


def children(ws: Workspace, parent: str) -> list:
    return [r for r in ws.runs(children_only=True) if r.data.tags["mlflow.parentRunId"] == parent]


def check_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def check_tables(ws: Workspace, result_dir: Path, parent: str) -> None:
    """CSV and Markdown both have one row per child run, with the run's last train/loss value in MLflow."""
    runs = children(ws, parent)
    with (result_dir / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(runs)
    by_id = {row["run_id"]: row for row in rows}
    for run in runs:
        row, params = by_id[run.info.run_id], run.data.params
        assert float(row["final_loss"]) == ws.losses(run.info.run_id)[-1]
        assert (row["trainer"], row["model"], row["optim"], row["lr"]) == (
            params["trainer.name"],
            params["model.name"],
            params["optim.name"],
            params["optim.lr"],
        )
        assert row["status"] == "FINISHED" and row["failure_reason"] == ""
        assert float(row["steps_per_s"]) == pytest.approx(1000 / run.data.metrics["time/step_ms"])
        assert row["run"] == f"{run.info.run_name} ({run.info.run_id[:8]})"
    table = [line for line in (result_dir / "report.md").read_text().splitlines() if line.startswith("|")]
    assert table[0] == "| run | trainer | model | optim | lr | final loss | steps/s | status |"
    assert len(table) == 2 + len(runs)  # header, separator, one per run
    for run in runs:
        assert sum(run.info.run_id[:8] in line for line in table) == 1


def test_report_on_a_four_run_sweep(sweeps: dict[str, Sweep], tmp_path: Path) -> None:
    ws, parent = sweeps["grid"].ws, sweeps["grid"].parent
    result = make_report(ws.uri, "backproplab", parent, tmp_path / "out")
    assert isinstance(result, ReportResult) and result.parent_run_id == parent
    assert result.curves == 4 and len(result.rows) == 4
    assert {p.name for p in (tmp_path / "out").iterdir()} == FILES
    check_png(result.png)
    check_tables(ws, result.out_dir, parent)
    # the overrides that differ; optim.momentum (sgd only) follows from the optimizer, checkpoint dirs are places
    assert sorted(result.labels) == sorted(
        f"{m} {o}" for m in ("sequential", "custom") for o in ("sgd", "adam")
    )
    assert {a.path for a in ws.client().list_artifacts(parent, "report")} == ARTIFACTS


def test_cli_reports_the_latest_sweep_and_logs_it(sweeps: dict[str, Sweep]) -> None:
    ws, parent = sweeps["grid"].ws, sweeps["grid"].parent
    proc = subprocess.run(
        [sys.executable, str(REPORT)], cwd=ws.path, capture_output=True, text=True, timeout=120
    )  # all defaults: the store under the cwd, the latest sweep, ./reports/<parent run id>/
    assert proc.returncode == 0, proc.stderr
    assert "4 runs, 4 curves" in proc.stdout
    out = ws.path / "reports" / parent
    check_png(out / "loss_curves.png")
    check_tables(ws, out, parent)
    assert {a.path for a in ws.client().list_artifacts(parent, "report")} == ARTIFACTS


def test_a_sweep_over_optimizers_is_labelled_by_optimizer(sweeps: dict[str, Sweep], tmp_path: Path) -> None:
    ws, parent = sweeps["optims"].ws, sweeps["optims"].parent
    result = make_report(ws.uri, "backproplab", None, tmp_path, log_artifacts=False)
    assert result.parent_run_id == parent and result.curves == 2
    assert sorted(result.labels) == ["adam", "sgd"]
    check_tables(ws, tmp_path, parent)
    # the multirun itself already wrote its report (sweep callback, on_multirun_end) into the sweep dir
    # and onto the parent run
    assert next(ws.path.glob("multirun/*/*/report/report.md")).is_file()
    assert {a.path for a in ws.client().list_artifacts(parent, "report")} == ARTIFACTS


@pytest.fixture(scope="module")
def handmade(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """A store written with MlflowClient: an older sweep, the latest sweep (one FINISHED child, one FAILED
    before its first step), then a lone run; and an experiment "solo" with no sweep at all."""
    from mlflow.entities import Metric

    ws = Workspace(tmp_path_factory.mktemp("handmade"))
    (ws.path / "mlruns").mkdir()
    client = ws.client()
    exp = client.create_experiment("backproplab", artifact_location=(ws.path / "mlruns").as_uri())
    client.create_experiment("solo", artifact_location=(ws.path / "mlruns").as_uri())
    client.create_run(client.get_experiment_by_name("solo").experiment_id, run_name="single")
    t = 1_700_000_000_000  # explicit start times: runs created in the same millisecond must still be ordered

    def run(name: str, start: int, parent: str | None = None, **params: str) -> str:
        tags = {"mlflow.parentRunId": parent} if parent else {}
        run_id = client.create_run(exp, start_time=t + start, tags=tags, run_name=name).info.run_id
        for k, v in params.items():
            client.log_param(run_id, k, v)
        return run_id

    common = {"trainer.name": "numpy", "model.name": "sequential", "optim.name": "sgd", "trainer.max_steps": "3"}
    old = run("old sweep", 0)
    run("old child", 1, old, **common, **{"optim.lr": "1e-6"})
    new = run("new sweep", 10)
    # both chose their thread count (trainer.threads=auto), and the load gave them different ones: not a label
    good = run("ok", 11, new, **common,
               **{"optim.lr": "1e-6", "trainer.checkpoint_dir": "/a/0", "trainer.threads": "2"})
    client.set_tag(good, "backproplab.auto", "trainer.threads")
    client.log_batch(good, metrics=[Metric("train/loss", 10.0 - s, t, s) for s in range(3)])
    client.log_metric(good, "time/loop_s", 0.5)  # no time/step_ms: steps/s = max_steps / loop_s
    client.set_terminated(good, "FINISHED")
    bad = run("boom", 12, new, **common,
              **{"optim.lr": "1e9", "trainer.checkpoint_dir": "/a/1", "trainer.threads": "1"})
    client.set_tag(bad, "backproplab.auto", "trainer.threads")
    client.set_tag(bad, "failure_reason", "loss diverged | at step 0")
    client.set_terminated(bad, "FAILED")
    run("lone", 20)  # the newest run, but it has no children: not a sweep
    return Sweep(ws, new)


def test_a_failed_run_without_metrics_keeps_its_row(handmade: Sweep, tmp_path: Path) -> None:
    result = make_report(handmade.ws.uri, "backproplab", None, tmp_path)
    assert result.parent_run_id == handmade.parent  # the latest run that has children
    assert result.curves == 1  # the failed run has no history to draw
    assert result.labels == ["lr=1e-6", "lr=1e9"]
    ok, boom = result.rows
    assert ok["final_loss"] == 8.0 and ok["steps_per_s"] == pytest.approx(6.0)
    assert (boom["final_loss"], boom["steps_per_s"], boom["status"]) == (None, None, "FAILED")
    md = result.markdown.read_text()
    assert "| status | failure reason |" in md
    assert "| boom (" in md and "|  |  | FAILED | loss diverged \\| at step 0 |" in md
    with result.csv.open() as f:
        rows = list(csv.DictReader(f))
    assert rows[1]["final_loss"] == "" and rows[1]["failure_reason"] == "loss diverged | at step 0"
    check_png(result.png)
    # this parent had no report before (no sweep callback wrote this store): what is logged is what was written
    client = handmade.ws.client()
    assert {x.path for x in client.list_artifacts(handmade.parent, "report")} == ARTIFACTS
    for path in (result.markdown, result.csv, result.png):
        logged = Path(client.download_artifacts(handmade.parent, f"report/{path.name}", str(tmp_path / "back")))
        assert logged.read_bytes() == path.read_bytes(), path.name


def test_clear_one_line_errors(handmade: Sweep, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = handmade.ws.uri
    capsys.readouterr()  # MLflow's own log lines from creating the store

    def error(*argv: str) -> str:
        assert main(list(argv)) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        return err

    missing = tmp_path / "mlflow.db"
    assert "no MLflow store" in error("--tracking-uri", f"sqlite:///{missing}")
    assert not missing.exists()  # a report never creates a store
    assert "no experiment named 'nope'" in error("--tracking-uri", uri, "--experiment", "nope")
    assert "no sweep found" in error("--tracking-uri", uri, "--experiment", "solo")
    assert "no run with id '0123abcd'" in error("--tracking-uri", uri, "--parent", "0123abcd")
    lone = handmade.ws.runs()[-1]
    assert lone.info.run_name == "lone"
    assert "has no child runs" in error("--tracking-uri", uri, "--parent", lone.info.run_id)


def test_differing_labels_show_a_group_choice_then_what_was_swept_within_it() -> None:
    params = [
        {"model.name": "sequential", "optim.name": "sgd", "optim.momentum": "0.0", "optim.lr": "0.1", "seed": "0"},
        {"model.name": "sequential", "optim.name": "adam", "optim.lr": "0.1", "seed": "0"},
        {"model.name": "sequential", "optim.name": "adam", "optim.lr": "0.01", "seed": "0"},
    ]
    assert differing_labels(params) == ["sgd lr=0.1", "adam lr=0.1", "adam lr=0.01"]
    assert differing_labels([{"a": "1"}]) == [""]  # nothing differs: make_report falls back to run names


def test_runs_that_differ_by_preset_are_labelled_by_it_alone() -> None:
    def preset(name: str, trainer: str, lr: str, dtype: str = "float32") -> dict[str, str]:
        return {"preset": name, "trainer.name": trainer, "optim.lr": lr, "data.dtype": dtype, "model.bias": "false"}

    params = [preset("numpy", "numpy", "1e-06", "float64"), preset("tensor", "tensor", "1e-06"),
              preset("nn", "lightning", "0.0001"), preset("optim", "lightning", "0.0001")]
    assert differing_labels(params) == ["numpy", "tensor", "nn", "optim"]
    params += [{**preset("nn", "lightning", "0.001"), "optim.lr": "0.001"}]  # a key swept beside the presets
    assert differing_labels(params)[-3:] == ["nn lr=0.0001", "optim lr=0.0001", "nn lr=0.001"]


def test_a_title_wraps_at_spaces_and_after_commas_never_inside_a_word() -> None:
    from backproplab.tracking.figures import wrap

    title = "backproplab: experiment=numpy,tensor,autograd,function,tensorflow,nn,optim,module,dynamic (9 runs)"
    lines = wrap(title, 60).splitlines()
    assert lines == ["backproplab: experiment=numpy,tensor,autograd,",
                     "function,tensorflow,nn,optim,module,dynamic (9 runs)"]
    # as few lines as the width allows, of even length: no word left alone on the last one
    assert wrap("backproplab: optim=sgd,adam,rmsprop seed=range(0,5) (15 runs, 3 groups)", 64).splitlines() == [
        "backproplab: optim=sgd,adam,rmsprop", "seed=range(0,5) (15 runs, 3 groups)"]
    assert "".join(wrap(title, 20).splitlines()).replace(" ", "") == title.replace(" ", "")
    assert wrap("short", 40) == "short"


def test_a_run_loss_curve_labels_its_ticks_in_plain_numbers_that_differ() -> None:
    """The run's loss_curve.png labels its log axis without mathtext (a third of the figure's cost, every run);
    a curve within one decade gets labelled minor ticks, which must read apart even a few percent apart."""
    import numpy as np
    from omegaconf import OmegaConf

    from backproplab.tracking.figures import loss_curve, tick

    assert [tick(v) for v in (1e-6, 3e-3, 0.01, 0.5, 100, 2000, 1e4, 3e7)] == [
        "1e-6", "3e-3", "0.01", "0.5", "100", "2000", "1e+4", "3e+7"]
    cfg = OmegaConf.create({"trainer": {"name": "numpy"}, "model": {"name": "sequential"},
                            "optim": {"name": "sgd", "lr": 1e-6}})
    for low, high in ((1.01e-5, 1.06e-5), (0.5, 3.0), (1e-6, 3e7)):
        fig = loss_curve(list(range(500)), list(np.geomspace(high, low, 500)), cfg)
        fig.canvas.draw()  # the formatters run on a drawn figure
        axis = fig.axes[0].yaxis
        labels = [t.get_text() for t in axis.get_majorticklabels() + axis.get_minorticklabels()
                  if t.get_text() and low <= t.get_position()[1] <= high]
        assert labels and len(labels) == len(set(labels)), (low, high, labels)
        assert not any("$" in label for label in labels)
