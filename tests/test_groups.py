"""From many runs to one conclusion (issue 34): the statistics against scipy on known inputs, groups and
contrasts from a real sweep read back from its store, ``--parent`` twice, and the lesson page of many seeds."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, Workspace
from scipy import stats as sp

from backproplab import stats
from backproplab.tracking import groups
from backproplab.tracking.report import make_report

REPORT = REPO / "scripts" / "report.py"


# -- the statistics, on known inputs ---------------------------------------------------------------------------
def test_a_groups_spread_is_the_geometric_mean_and_a_t_interval_in_log_space() -> None:
    values = [0.01, 0.02, 0.005, 0.012, 0.03]
    s = stats.spread(values)
    logs = np.log(values)
    low, high = sp.t.interval(0.95, len(logs) - 1, loc=logs.mean(), scale=logs.std(ddof=1) / math.sqrt(len(logs)))
    assert s.n == 5 and s.gmean == pytest.approx(sp.gmean(values))
    assert (s.ci_low, s.ci_high) == (pytest.approx(math.exp(low)), pytest.approx(math.exp(high)))
    assert (s.median, s.min, s.max) == (0.012, 0.005, 0.03) and not s.constant
    # n = 1: a centre, no interval; n = 2: t with one degree of freedom (12.7), wide
    one = stats.spread([3.0])
    assert (one.n, one.gmean, one.ci_low, one.ci_high, one.median) == (1, pytest.approx(3.0), None, None, 3.0)
    two = stats.spread([1.0, 4.0])
    assert two.gmean == pytest.approx(2.0)
    assert math.log(two.ci_high / 2.0) == pytest.approx(sp.t.ppf(0.975, 1) * np.std(np.log([1, 4]), ddof=1) / 2**0.5)
    # identical losses (a config whose start the seed does not vary): zero width, and said to be constant
    same = stats.spread([0.5, 0.5, 0.5])
    assert (same.ci_low, same.gmean, same.ci_high) == (0.5, pytest.approx(0.5), 0.5) and same.constant
    # a FAILED seed's loss (inf, nan) is never averaged in
    assert stats.spread([1.0, 4.0, math.inf, math.nan]) == two
    assert stats.spread([]).n == 0 and stats.quartiles([]).n == 0
    q = stats.quartiles([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (q.median, q.q1, q.q3) == (3.0, 2.0, 4.0)


def test_a_paired_contrast_is_a_ratio_with_its_t_interval_and_an_exact_sign_flip_p() -> None:
    group = dict(enumerate([0.01, 0.02, 0.005, 0.012, 0.03]))
    base = dict(enumerate([1.0, 1.1, 0.9, 1.3, 0.8]))
    c = stats.contrast("final_loss", "adam", group, "sgd", base)
    d = np.log(list(group.values())) - np.log(list(base.values()))
    low, high = sp.t.interval(0.95, 4, loc=d.mean(), scale=sp.sem(d))
    assert (c.pairs, c.test, c.lower, c.higher) == (5, "sign-flip", 5, 0)
    assert c.ratio == pytest.approx(math.exp(d.mean()))
    assert (c.ci_low, c.ci_high) == (pytest.approx(math.exp(low)), pytest.approx(math.exp(high)))
    # all 2^5 sign patterns: only the observed one (and its mirror) is as extreme
    assert c.p == pytest.approx(2 / 32) and c.p_min == pytest.approx(2 / 32)
    line = stats.verdict(c)
    assert line.startswith("adam vs sgd: final loss 0.013× (95% CI 0.0052–0.032), lower on 5/5 seeds, p = 0.0625 "
                           "(the least 5 pairs can give)")
    assert line.endswith("cannot decide: 5 pairs cannot reach p < 0.05, 6 can")
    assert stats.pairs_needed() == 6 and stats.p_min(6) < 0.05 <= stats.p_min(5)


def test_the_sign_flip_p_is_scipys_permutation_test_with_ties() -> None:
    d = np.log([1.1, 0.9, 1.2, 0.95, 1.3, 1.05, 1.0, 1.0])  # two ties at zero: a zero flips to itself
    group = dict(enumerate(np.exp(d)))
    c = stats.contrast("step_ms", "b", group, "a", dict.fromkeys(range(8), 1.0))
    exact = sp.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf)
    assert c.p == pytest.approx(exact.pvalue) and c.p_min == pytest.approx(2 / 256)
    assert (c.lower, c.higher) == (2, 4)
    # by hand: the share of the 256 sign patterns whose mean is at least as far from 0 as the observed one
    patterns = np.array(np.meshgrid(*[[-1, 1]] * 8)).reshape(8, -1).T
    means = (patterns * d).mean(axis=1)
    assert c.p == pytest.approx(np.mean(np.abs(means) >= abs(d.mean()) - 1e-12))


def test_one_pair_no_shared_seeds_and_configs_seeds_do_not_vary() -> None:
    one = stats.contrast("final_loss", "b", {0: 2.0}, "a", {0: 1.0})
    assert (one.pairs, one.ratio, one.ci_low, one.p, one.p_min) == (1, 2.0, None, 1.0, 1.0)
    # no seed in common: Welch's t-test on the log values, as scipy computes it
    welch = stats.contrast("final_loss", "b", {0: 1.0, 1: 2.0, 2: 4.0}, "a", {5: 1.0, 6: 1.5, 7: 1.2})
    ref = sp.ttest_ind(np.log([1.0, 2.0, 4.0]), np.log([1.0, 1.5, 1.2]), equal_var=False)
    assert (welch.pairs, welch.test, welch.p_min) == (0, "welch", None)
    assert welch.p == pytest.approx(ref.pvalue)
    assert welch.ci_low == pytest.approx(math.exp(ref.confidence_interval(0.95).low))
    assert "no shared seeds (Welch's t-test on log values)" in stats.verdict(welch)
    # both configs give one loss whatever the seed: the ratio is exact, and nothing is tested
    fixed = stats.contrast("final_loss", "b", dict.fromkeys(range(5), 2.0), "a", dict.fromkeys(range(5), 1.0))
    assert (fixed.ratio, fixed.ci_low, fixed.ci_high, fixed.test, fixed.p) == (2.0, 2.0, 2.0, "none", None)
    assert "seeds do not vary these configs, nothing to test" in stats.verdict(fixed)


def test_the_band_per_step_is_the_t_interval_of_the_runs_that_reached_it() -> None:
    logs = np.log([[1.0, 2.0, 3.0], [2.0, 2.0, np.nan], [4.0, 2.0, np.nan]])  # two runs stopped early
    n, mean, low, high = stats.band(logs)
    assert list(n) == [3, 3, 1]
    first = stats.log_interval(logs[:, 0])
    assert (low[0], high[0]) == (pytest.approx(first[0]), pytest.approx(first[1]))
    assert low[1] == high[1] == pytest.approx(math.log(2.0))  # equal values: zero width
    assert mean[2] == pytest.approx(math.log(3.0)) and math.isnan(low[2])  # one run: no band


def test_the_seeds_a_sweep_asked_for_come_from_its_overrides() -> None:
    assert groups.asked_seeds("optim=sgd,adam seed=range(0,5)") == [0, 1, 2, 3, 4]
    assert groups.asked_seeds("seed=3,1 trainer.max_steps=5") == [3, 1]
    assert groups.asked_seeds("+seed=7") == [7]
    assert groups.asked_seeds("optim=sgd,adam") is None
    assert groups.asked_seeds(None) is None
    # a space inside the override (the tag joins overrides with spaces); shuffle(...) in its listed order; the
    # sweeper's params after the command line, the last one winning, as in Hydra's sweeper
    assert groups.asked_seeds("experiment=numpy seed=range(4, 7) optim.lr=1,2") == [4, 5, 6]
    assert groups.asked_seeds("seed=shuffle(5,3,4)") == [5, 3, 4]
    assert groups.asked_seeds("seed=range(0,4)", {"seed": "8,9"}) == [8, 9]
    assert groups.asked_seeds("seed=interval(0,1)") is None
    assert groups.spans([0, 1, 2, 3, 5, 7, 8]) == "0–3, 5, 7–8"


# -- a real sweep ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sweeps(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Two real sweeps into one store: 2 learning rates × 3 seeds, and 3 seeds of a third rate. One thread, so
    that the same seed gives the same numbers whatever the load."""
    ws = Workspace(tmp_path_factory.mktemp("groups"))
    common = ("experiment=numpy", "trainer.max_steps=20", "trainer.threads=1")
    ws.train("-m", *common, "optim.lr=1e-6,2e-6", "seed=0,1,2", timeout=900)
    ws.train("-m", *common, "optim.lr=3e-6", "seed=range(0,3)", timeout=900)
    return ws


def parents(ws: Workspace) -> list:
    return sorted((r for r in ws.runs() if "mlflow.parentRunId" not in r.data.tags), key=lambda r: r.info.start_time)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_sweep_over_seeds_ends_in_groups_a_contrast_and_a_band(sweeps: Workspace) -> None:
    ws = sweeps
    first = parents(ws)[0]
    out = sorted(ws.path.glob("multirun/*/*/report"))[0]  # the sweep callback's report, in its sweep dir
    kids = [r for r in ws.runs(children_only=True) if r.data.tags["mlflow.parentRunId"] == first.info.run_id]
    assert len(kids) == 6
    # every child is tagged with its group, for MLflow's own "Group by"
    assert sorted(r.data.tags["backproplab.group"] for r in kids) == ["lr=1e-06"] * 3 + ["lr=2e-06"] * 3
    assert all(r.data.tags["backproplab.host"] for r in kids)
    rows = read_csv(out / "groups.csv")
    assert [(r["group"], r["n"], r["seeds"], r["missing"], r["failed"]) for r in rows] == [
        ("lr=1e-06", "3", "0–2", "", "0"), ("lr=2e-06", "3", "0–2", "", "0")]
    finals = {(r.data.params["optim.lr"], int(r.data.params["seed"])): ws.losses(r.info.run_id)[-1] for r in kids}
    for row, lr in zip(rows, ("1e-06", "2e-06"), strict=True):  # what MLflow holds, through scipy
        losses = [finals[lr, s] for s in range(3)]
        assert float(row["final_loss_gmean"]) == pytest.approx(sp.gmean(losses))
        logs = np.log(losses)
        _, high = sp.t.interval(0.95, 2, loc=logs.mean(), scale=sp.sem(logs))
        assert float(row["final_loss_ci_high"]) == pytest.approx(math.exp(high))
    (loss, step) = read_csv(out / "contrasts.csv")
    assert (loss["metric"], loss["group"], loss["baseline"], loss["pairs"], loss["test"]) == (
        "final_loss", "lr=2e-06", "lr=1e-06", "3", "sign-flip")
    d = np.log([finals["2e-06", s] / finals["1e-06", s] for s in range(3)])
    assert float(loss["ratio"]) == pytest.approx(math.exp(d.mean()))
    exact = sp.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf)
    assert float(loss["p"]) == pytest.approx(exact.pvalue) and float(loss["p_min"]) == 0.25
    assert step["metric"] == "step_ms"
    md = (out / "report.md").read_text()
    assert "## Groups" in md and "## Contrasts" in md and "2 contrasts" in md
    assert "- lr=2e-06 vs lr=1e-06: final loss " in md and "cannot decide: 3 pairs cannot reach p < 0.05, 6 can" in md
    assert "geometric mean" in md and "95% t-interval" in md and "sign-flip" in md  # what each number is
    # the figure: one legend entry per group, each with its n
    result = make_report(ws.uri, "backproplab", first.info.run_id, ws.path / "again", log_artifacts=False)
    assert result.curves == 2 and [g.label for g in result.groups] == ["lr=1e-06", "lr=2e-06"]
    assert result.legend == ["lr=1e-06, n=3", "lr=2e-06, n=3"]


@pytest.mark.slow
def test_a_sweep_over_seeds_alone_is_one_group_that_says_so(sweeps: Workspace) -> None:
    second = parents(sweeps)[1]
    out = sorted(sweeps.path.glob("multirun/*/*/report"))[-1]
    (row,) = read_csv(out / "groups.csv")
    assert row["group"].endswith("(only the seed varies)") and row["n"] == "3" and row["seeds"] == "0–2"
    assert read_csv(out / "contrasts.csv") == []  # nothing to compare with
    kids = [r for r in sweeps.runs(children_only=True) if r.data.tags["mlflow.parentRunId"] == second.info.run_id]
    assert {r.data.tags["backproplab.group"] for r in kids} == {row["group"]}


@pytest.mark.slow
def test_two_sweeps_compare_in_one_report_written_to_out_and_to_no_run(sweeps: Workspace) -> None:
    ws = sweeps
    first, second = (p.info.run_id for p in parents(ws))
    out = ws.path / "both"
    proc = subprocess.run(
        [sys.executable, str(REPORT), "--parent", first, "--parent", second, "--out", str(out),
         "--baseline", "lr=2e-06"], cwd=ws.path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "9 runs in 3 groups" in proc.stdout and "logged to" not in proc.stdout
    rows = read_csv(out / "groups.csv")
    assert [r["group"] for r in rows] == ["lr=1e-06", "lr=2e-06", "lr=3e-06"]
    contrasts = read_csv(out / "contrasts.csv")
    assert {(c["group"], c["baseline"]) for c in contrasts} == {("lr=1e-06", "lr=2e-06"), ("lr=3e-06", "lr=2e-06")}
    assert all(c["pairs"] == "3" for c in contrasts)  # the second sweep's seeds pair with the first's
    assert "4 contrasts" in (out / "report.md").read_text()
    for parent in (first, second):  # the runs' own report/ stays the sweep callback's
        logged = {a.path for a in ws.client().list_artifacts(parent, "report")}
        assert "report/groups.csv" in logged
    assert not any(a.path.startswith("both") for a in ws.client().list_artifacts(first))
    # a baseline that is no group's label: one line that lists the groups
    bad = subprocess.run([sys.executable, str(REPORT), "--parent", first, "--baseline", "lr=9", "--out",
                          str(ws.path / "x")], cwd=ws.path, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "no group labelled 'lr=9'; the groups are: lr=1e-06, lr=2e-06" in bad.stderr


# -- runs written with MlflowClient: a FAILED seed, a seed that never ran, many seeds ---------------------------
def _store(ws: Workspace, seeds: int, failed: tuple[int, ...] = (), overrides: str | None = None,
           overlap: bool = False) -> str:
    """A sweep written with MlflowClient, as an older sweep (no group tags): ``seeds`` seeds of one config, each
    with a 50-step curve and its step code, the ``failed`` ones FAILED after 10 steps; ``overlap``: each run's
    times overlap the next one's on one host, as two joblib workers' do."""
    import json

    from mlflow.entities import Metric

    client = ws.client()
    exp = client.get_experiment_by_name("backproplab")
    exp_id = exp.experiment_id if exp else client.create_experiment(
        "backproplab", artifact_location=(ws.path / "mlruns").as_uri())
    parent = client.create_run(exp_id, run_name="seeds", tags={"overrides": overrides or f"seed=range(0,{seeds})"})
    code = ws.path / "code"
    code.mkdir(exist_ok=True)
    (code / "step.json").write_text(json.dumps({"trainer": "numpy", "model": "sequential", "optim": "sgd",
                                                "about": "numpy", "regions": [
                                                    {"file": "numpy.py", "line": 1, "region": "step",
                                                     "code": "w = w - 1  # the step\n" * 10}]}))
    rng = np.random.default_rng(seeds)
    for seed in range(seeds):
        start = 1_700_000_000_000 + seed * (1000 if overlap else 10_000)
        run = client.create_run(exp_id, run_name=f"numpy seed={seed}", start_time=start,
                                tags={"mlflow.parentRunId": parent.info.run_id, "backproplab.job": str(seed),
                                      "backproplab.host": "node1"})
        rid = run.info.run_id
        client.log_batch(rid, params=[_param("seed", str(seed)), _param("trainer.name", "numpy"),
                                      _param("optim.lr", "1e-06")])
        steps = 10 if seed in failed else 50
        scale = rng.lognormal()
        client.log_batch(rid, metrics=[Metric("train/loss", float(scale * 1e4 / (s + 1)), 0, s) for s in range(steps)]
                         + [Metric("time/step_ms", float(rng.uniform(0.4, 0.6)), 0, 0)])
        client.log_artifact(rid, str(code / "step.json"), "code")
        client.set_terminated(rid, "FAILED" if seed in failed else "FINISHED", end_time=start + 5000)
    client.set_terminated(parent.info.run_id, "FINISHED")
    return parent.info.run_id


def _param(key: str, value: str):  # noqa: ANN202
    from mlflow.entities import Param

    return Param(key, value)


def test_a_failed_seed_and_one_that_never_ran_are_missing_never_averaged(ws: Workspace) -> None:
    parent = _store(ws, 5, failed=(3,), overrides="seed=range(0,6)", overlap=True)  # seed 5 never opened a run
    result = make_report(ws.uri, "backproplab", parent, ws.path / "out", log_artifacts=False)
    (row,) = read_csv(ws.path / "out" / "groups.csv")
    assert (row["n"], row["seeds"], row["missing"], row["failed"]) == ("4", "0–2, 4", "3 (FAILED), 5 (no run)", "1")
    finals = [r.final for r in result.groups[0].runs if r.finished]
    assert float(row["final_loss_gmean"]) == pytest.approx(sp.gmean(finals))
    assert result.legend == ["numpy (only the seed varies), n=5, 1 failed"]  # one group, one entry
    # the runs shared a host at the same time: their timings are said to be measured under that load
    assert ("5 of 5 runs overlapped in time with another on the same host (node1): their timings were measured "
            "under that load.") in result.markdown.read_text()


def test_the_lesson_page_of_64_seeds_is_at_most_twice_that_of_8(ws: Workspace) -> None:
    from backproplab.tracking.lesson import make_lesson

    sizes = {}
    for n in (8, 64):
        parent = _store(ws, n)
        out = ws.path / f"out{n}"
        make_report(ws.uri, "backproplab", parent, out, log_artifacts=False)
        page = make_lesson(ws.uri, parent, out, log_artifact=False)
        text = page.read_text()
        assert text.count("<section") == 1 and text.count("# the step") == 10  # the step shown once
        assert f"over {n} runs" in text and f"<dt>seeds</dt><dd>{n}</dd>" in text
        sizes[n] = page.stat().st_size
    assert sizes[64] <= 2 * sizes[8], sizes


def test_the_comparing_page_quotes_the_report_of_make_compare() -> None:
    """docs/comparing.md's block is make compare's report as written (scripts/docs_images.py): a group table of
    three optimizers over five seeds, and verdicts whose ratios agree with the table, within the digits shown
    (over the same seeds, the geometric mean of per-seed ratios is the ratio of the geometric means)."""
    import re

    text = (REPO / "docs" / "comparing.md").read_text()
    block = text.split("<!-- compare:begin", 1)[1].split("<!-- compare:end -->", 1)[0]
    rows = [line.split("|")[1:-1] for line in block.splitlines() if line.startswith("| ") and "---" not in line]
    header, *groups_ = rows
    assert [c.strip() for c in header[:4]] == ["group", "n", "seeds", "final loss (geometric mean)"]
    gmean = {g[0].strip(): float(g[3]) for g in groups_}
    assert list(gmean) == ["sgd", "adam", "rmsprop"] and all(g[1].strip() == "5" for g in groups_)
    verdicts = [line for line in block.splitlines() if line.startswith("- ")]
    assert len(verdicts) == 4  # 2 groups x 2 metrics, against sgd
    for line in verdicts:
        m = re.match(r"- (\w+) vs sgd: (final loss|step time) ([\d.e+-]+)× \(95% CI [\d.e+-]+–[\d.e+-]+\), "
                     r"(lower|higher) on \d/5 seeds, p = [\d.]+", line)
        assert m, line
        if m.group(2) == "final loss":
            assert float(m.group(3)) == pytest.approx(gmean[m.group(1)] / gmean["sgd"], rel=0.06), line
        assert "cannot decide: 5 pairs cannot reach p < 0.05, 6 can" in line
