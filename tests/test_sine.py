"""The sine edition (issue 11): eight presets fit y = sin(x) as the tutorial taught today does, each through
the real CLI in one multirun; the record carries the fitted formula, fit.png and the dataset; every cubic's
final loss sits above the least-squares optimum of a cubic on the grid; legendre3's loss follows from its
arithmetic alone; and verify finds the trainers of poly3 and legendre3 equal in float64."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO, Workspace

from backproplab import verify

SINE = ("numpy", "tensor", "autograd", "function", "nn", "optim", "module", "dynamic")
# what each example of the current edition is: trainer, model, optim, lr, init, dtype, steps
TUTORIAL = {
    "numpy": ("numpy", "poly3", "sgd", "1e-06", "randn", "float64", "2000"),
    "tensor": ("tensor", "poly3", "sgd", "1e-06", "randn", "float32", "2000"),
    "autograd": ("autograd", "poly3", "sgd", "1e-06", "randn", "float32", "2000"),
    "function": ("function", "legendre3", "sgd", "5e-06", "fixed", "float32", "2000"),
    "nn": ("lightning", "poly_nn", "sgd", "1e-06", "default", "float32", "2000"),
    "optim": ("lightning", "poly_nn", "rmsprop", "0.001", "default", "float32", "2000"),
    "module": ("lightning", "poly3", "sgd", "1e-06", "randn", "float32", "2000"),
    "dynamic": ("lightning", "poly_dynamic", "sgd_momentum", "1e-08", "randn", "float32", "30000"),
}
X = np.linspace(-np.pi, np.pi, 2000)
Y = np.sin(X)


def lstsq_floor(*columns: np.ndarray) -> float:
    """The least summed squared error of any fit y ~ sum_k theta_k column_k on the grid."""
    A = np.stack(columns, axis=1)
    theta = np.linalg.lstsq(A, Y, rcond=None)[0]
    return float(np.square(A @ theta - Y).sum())


ONE = np.ones_like(X)
CUBIC = lstsq_floor(ONE, X, X**2, X**3)
# the dynamic model's three shapes: the cubic, + e x^4, + e (x^4 + x^5) with one shared e
DYNAMIC = min(CUBIC, lstsq_floor(ONE, X, X**2, X**3, X**4), lstsq_floor(ONE, X, X**2, X**3, X**4 + X**5))


@pytest.fixture(scope="module")
def eight(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The documented command (make examples-sine): all eight presets as one multirun."""
    ws = Workspace(tmp_path_factory.mktemp("sine"))
    ws.proc = ws.train("-m", "experiment=" + ",".join(f"sine_{n}" for n in SINE), env={"OMP_NUM_THREADS": "1"})
    ws.children = {r.data.tags["preset"].removeprefix("sine_"): r for r in ws.runs(children_only=True)}
    return ws


def test_eight_finished_children_under_one_parent_and_the_makefile_runs_them(eight: Workspace) -> None:
    parents = [r for r in eight.runs() if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(eight.children) == sorted(SINE)
    assert {r.data.tags["mlflow.parentRunId"] for r in eight.children.values()} == {parents[0].info.run_id}
    assert all(r.info.status == "FINISHED" for r in eight.children.values())
    assert "8 finished" in eight.proc.stdout
    presets = {p.stem for p in (REPO / "conf" / "experiment").glob("sine_*.yaml")}
    assert presets == {f"sine_{n}" for n in SINE}
    assert "experiment=" + ",".join(f"sine_{n}" for n in SINE) in (REPO / "Makefile").read_text()


def test_the_report_overlays_eight_fits_on_sin(eight: Workspace, tmp_path) -> None:
    from backproplab.tracking.report import make_report

    parent = next(r for r in eight.runs() if "mlflow.parentRunId" not in r.data.tags)
    result = make_report(eight.uri, "backproplab", parent.info.run_id, tmp_path, log_artifacts=False)
    assert (result.curves, result.fits) == (8, 8)
    table = result.markdown.read_text()
    assert table.count("| y = ") == 8  # the fit column: each run's formula
    logged = {a.path for a in eight.client().list_artifacts(parent.info.run_id, "report")}
    assert "report/loss_curves.png" in logged  # the sweep callback drew it at the end of the multirun


@pytest.mark.parametrize("name", SINE)
def test_preset_is_the_tutorials_example(eight: Workspace, name: str) -> None:
    p = eight.children[name].data.params
    got = (p["trainer.name"], p["model.name"], p["optim.name"], p["optim.lr"], p["model.init"], p["data.dtype"],
           p["trainer.max_steps"])
    assert got == TUTORIAL[name]
    assert (p["data.name"], p["data.n"], p["loss.reduction"]) == ("sine", "2000", "sum")
    if name == "dynamic":
        assert p["optim.momentum"] == "0.9" and p["model.max_extra_terms"] == "2"


@pytest.mark.parametrize("name", SINE)
def test_record_has_the_formula_the_fit_and_the_dataset(eight: Workspace, name: str) -> None:
    run = eight.children[name]
    client = eight.client()
    formula = run.data.tags["fit.formula"]
    assert formula.startswith("y = ") and " x" in formula
    assert f"Result: {formula}" in run.data.tags["mlflow.note.content"].splitlines()
    assert run.data.tags["mlflow.note.content"].startswith("python ")  # the command comes first
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"fit.png", "fit.json", "result.txt", "loss_curve.png", "config.yaml"} <= artifacts
    assert open(client.download_artifacts(run.info.run_id, "result.txt")).read() == f"Result: {formula}\n"
    fit = json.load(open(client.download_artifacts(run.info.run_id, "fit.json")))
    assert len(fit["curves"]) == (3 if name == "dynamic" else 1)
    assert np.allclose(np.sin(fit["x"]), fit["y"], atol=1e-6)
    (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]
    assert dataset.name == "sine-2000"


@pytest.mark.parametrize("name", SINE)
def test_final_loss_sits_above_the_least_squares_floor(eight: Workspace, name: str) -> None:
    losses = eight.losses(eight.children[name].info.run_id)
    assert len(losses) == int(TUTORIAL[name][6])
    floor = DYNAMIC if name == "dynamic" else CUBIC
    final = losses[-1]
    assert final >= floor * (1 - 1e-5), (name, final, floor)  # float32 rounding, no more
    # the tutorial's range: single digits to the low teens after 2000 steps (an unlucky RMSprop start: higher)
    assert final < (100 if name == "optim" else 20), (name, final)
    assert final < 0.05 * losses[0]  # legendre3 starts lowest, at 462


def test_legendre3_loss_follows_from_its_arithmetic(eight: Workspace) -> None:
    """No random start: a + b P3(c + d x) from (0, -1, 0, 0.3), SGD lr 5e-6, recomputed here in float64."""
    a, b, c, d = 0.0, -1.0, 0.0, 0.3
    expected = []
    for _ in range(2000):
        z = c + d * X
        p3 = 0.5 * (5 * z**3 - 3 * z)
        err = a + b * p3 - Y
        expected.append(float(np.square(err).sum()))
        g = 2 * err
        gz = g * b * 1.5 * (5 * z**2 - 1)
        a, b, c, d = a - 5e-6 * g.sum(), b - 5e-6 * (g * p3).sum(), c - 5e-6 * gz.sum(), d - 5e-6 * (gz * X).sum()
    got = eight.losses(eight.children["function"].info.run_id)
    assert np.allclose(got, expected, rtol=1e-4), (got[-1], expected[-1])  # float32 training


def test_a_model_of_the_other_problem_is_refused_in_one_line(ws: Workspace) -> None:
    proc = ws.train("data=sine", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "model=sequential fits data=random, not data=sine; models for data=sine: legendre3, poly3" in line
    assert not ws.db.exists()  # no run, no store
    proc = ws.train("experiment=sine_tensor", "model=legendre3", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "model=legendre3 is not supported by trainer=tensor; trainers that support it: autograd, function" in (
        proc.stderr
    )


@pytest.mark.parametrize("model", ["poly3", "legendre3"])
def test_verify_finds_three_or_more_ways_equal(model: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert verify.main(["--model", model, "--steps", "300"]) == 0
    out = capsys.readouterr().out
    assert "all trainers agree" in out and "data=sine" in out and "float64" in out
    verdicts = [line.split("│")[-2].strip() for line in out.splitlines() if line.count("│") > 2]
    ok = [v for v in verdicts if v in ("ok", "reference")]
    assert len(ok) >= 3, out


def test_the_lesson_shows_each_fit_over_sin_and_its_formula(eight: Workspace) -> None:
    """make examples-sine's lesson page: each of the eight ways with its step's code, its curve, and its fitted
    curve over sin(x) with the formula; the ways the reference trains say how close their gradients are."""
    import html
    import re

    (path,) = eight.path.glob("multirun/*/*/report/lesson.html")
    page = path.read_text()
    names = re.findall(r'<section id="([^"]+)"', page)
    assert names == [f"sine_{n}" for n in SINE]  # the sweep's order
    assert page.count("<img ") == 1 + 8 + 8  # the overlay, and each way's curve and fit
    text = html.unescape(page)
    for name in SINE:
        formula = eight.children[name].data.tags["fit.formula"]
        assert formula in text and f'alt="fit of sine_{name}"' in page, name
    function = html.unescape(re.sub(r"<[^>]+>", "", page.split('id="sine_function"')[1].split("<section")[0]))
    assert "class LegendrePolynomial3(torch.autograd.Function):" in function  # its step's own Function
    # one seed: each run is its own group and checks itself (a seed sweep checks once a group: test_experiments.py)
    for name, run in eight.children.items():  # poly_nn and poly_dynamic are not autograd's: no figure
        agreement = run.data.metrics.get("verify/grad_rel_diff")
        assert agreement is None or agreement <= 1e-10, name
    assert sum(r.data.metrics.get("verify/grad_rel_diff") is not None for r in eight.children.values()) >= 4
