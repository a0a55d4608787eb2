"""The comparison report of a sweep, read back from MLflow: one figure with every child run's loss curve, a
table (Markdown and CSV) of run, trainer, model, optim, lr, final loss, steps/s and status, all three logged
as artifacts of the parent run under ``report/``.

    python scripts/report.py                      # the latest sweep in ./mlflow.db
    python scripts/report.py --parent <run id> --out reports/mine

The sweep callback calls :func:`make_report` after a multirun; :func:`main` is the command line.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backproplab.stats import Contrast
from backproplab.tracking import groups
from backproplab.tracking.figures import LOSS_KEY, sweep_figure
from backproplab.tracking.labels import as_asked, differing_labels
from backproplab.tracking.names import distinct
from backproplab.tracking.store import PARENT_TAG, default_store

ARTIFACT_PATH = "report"
COLUMNS = ("run", "trainer", "model", "optim", "lr", "final_loss", "steps_per_s", "status")
HEADERS = {"final_loss": "final loss", "steps_per_s": "steps/s", "failure_reason": "failure reason"}


class ReportError(Exception):
    """A user-facing problem (no store, no experiment, no sweep, unknown run): one line, no traceback."""


@dataclass
class ReportResult:
    """What :func:`make_report` wrote: the three files, the table rows, how many curves the figure has (counted
    on the figure before saving) and each run's label."""

    parent_run_id: str
    out_dir: Path
    png: Path
    markdown: Path
    csv: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    curves: int = 0
    fits: int = 0  # fitted curves drawn beside the loss curves (runs of a formula model, the sine edition)
    labels: list[str] = field(default_factory=list)  # each row's run's label (its legend entry, without repeats)
    groups: list[groups.Group] = field(default_factory=list)  # the runs in groups: params equal except the seed
    contrasts: list[Contrast] = field(default_factory=list)  # every group against the baseline group
    legend: list[str] = field(default_factory=list)  # the figure's legend, one entry per group

    def verdicts(self) -> list[str]:
        """One line per contrast, when the sweep repeated configs over seeds (else none: groups of one)."""
        from backproplab.stats import verdict

        return [verdict(c) for c in self.contrasts] if len(self.groups) < len(self.rows) else []


# -- reading MLflow ------------------------------------------------------------------------------------------
def search_all(client: Any, experiment_ids: list[str], filter_string: str, order_by: list[str]) -> list[Any]:
    """Every matching run, page by page (one page is capped by the store)."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string=filter_string, max_results=1000, order_by=order_by, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _latest_parent(client: Any, experiment_id: str) -> str | None:
    """The most recently started run that has children (a sweep's parent, whoever created it)."""
    children = search_all(client, [experiment_id], f"tags.`{PARENT_TAG}` LIKE '%'", [])
    parent_ids = sorted({r.data.tags[PARENT_TAG] for r in children})
    best: Any = None
    for i in range(0, len(parent_ids), 100):  # chunks keep the IN list well under sqlite's variable limit
        ids = ", ".join(f"'{p}'" for p in parent_ids[i : i + 100])
        page = client.search_runs(
            [experiment_id],
            filter_string=f"attributes.run_id IN ({ids})",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        if page and (best is None or page[0].info.start_time > best.info.start_time):
            best = page[0]
    return best.info.run_id if best else None


def _get_run(client: Any, run_id: str, uri: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise ReportError(f"no run with id {run_id!r} in {_masked(uri)}") from None
        raise


def _history(client: Any, run_id: str) -> tuple[list[int], list[float]]:
    """The full train/loss history ordered by step (the later write wins if a step was logged twice)."""
    points = sorted(client.get_metric_history(run_id, LOSS_KEY), key=lambda m: (m.step, m.timestamp))
    by_step = {m.step: m.value for m in points}
    return list(by_step), list(by_step.values())


def _fit(client: Any, run: Any) -> dict | None:
    """The run's fit.json (logged by a formula model's run, with its ``fit.formula`` tag), else None."""
    import json
    import tempfile

    if "fit.formula" not in run.data.tags:
        return None
    bar = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"  # a bar per small file would drown the sweep's summary
    previous = os.environ.get(bar)
    os.environ[bar] = "false"
    try:
        with tempfile.TemporaryDirectory() as d:
            return json.loads(Path(client.download_artifacts(run.info.run_id, "fit.json", d)).read_text())
    except Exception:  # an older run, or one whose artifacts are gone: no fit to draw
        return None
    finally:
        if previous is None:
            os.environ.pop(bar, None)
        else:
            os.environ[bar] = previous


def _masked(uri: str) -> str:
    from backproplab.runtime import mask_secrets

    return mask_secrets(uri)


def _check_store(uri: str) -> None:
    """Opening a sqlite URI creates the database: a report must not leave an empty store behind a typo."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_absolute():  # sqlite:///rel.db is relative to the cwd, sqlite:////abs.db absolute
            path = Path.cwd() / path
        if not path.exists():
            raise ReportError(f"no MLflow store at {path} (run a sweep first, or pass --tracking-uri)")


# -- rows ----------------------------------------------------------------------------------------------------
def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _steps_per_s(run: Any) -> float | None:
    metrics, params = run.data.metrics, run.data.params
    step_ms = _float(metrics.get("time/step_ms"))
    if step_ms:
        return 1000.0 / step_ms
    loop_s, max_steps = _float(metrics.get("time/loop_s")), _float(params.get("trainer.max_steps"))
    if loop_s and max_steps:
        return max_steps / loop_s
    return None


def _row(run: Any, losses: list[float]) -> dict[str, Any]:
    p, tags = run.data.params, run.data.tags
    final = losses[-1] if losses else _float(run.data.metrics.get("final_loss"))
    return {
        "run": f"{run.info.run_name} ({run.info.run_id[:8]})",
        "trainer": p.get("trainer.name", tags.get("trainer", "")),
        "model": p.get("model.name", tags.get("model", "")),
        "optim": p.get("optim.name", tags.get("optim", "")),
        "lr": p.get("optim.lr", ""),
        "final_loss": final,
        "steps_per_s": _steps_per_s(run),
        "status": run.info.status,
        "failure_reason": tags.get("failure_reason"),
        "fit": tags.get("fit.formula"),
        "run_id": run.info.run_id,
    }


# -- writing -------------------------------------------------------------------------------------------------
def _cell(value: Any, digits: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, digits)
    # a table cell is one line; a pipe would open a new column
    return str(value).replace("\n", " ").replace("|", "\\|")


def _markdown(rows: list[dict[str, Any]], title: str, summary: str, png_name: str, groups_md: str = "") -> str:
    extra = [c for c in ("fit", "failure_reason") if any(r[c] for r in rows)]  # the sine edition's formulas
    cols = list(COLUMNS) + extra
    numeric = {"final_loss": ".4g", "steps_per_s": ".1f"}
    # the lr cell reads as the run's name does (1.15e-05, more digits where two rows would read the same); the
    # CSV keeps the value in full
    lrs = [r["lr"] for r in rows]
    short_lr = dict(zip(lrs, distinct(lrs), strict=True))
    lines = [f"# {title}", "", summary, "", f"![loss curves]({png_name})", ""]
    if groups_md:  # repeats over seeds: the groups and their contrasts, then every run
        lines += [groups_md, "## Runs", ""]
    lines.append("| " + " | ".join(HEADERS.get(c, c) for c in cols) + " |")
    lines.append("|" + "|".join("---:" if c in numeric else "---" for c in cols) + "|")
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            if c == "failure_reason" and v and len(v) > 120:
                v = v[:117] + "..."
            if c == "lr":
                v = short_lr[v]
            cells.append(_cell(v, numeric.get(c, "")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -- the report ----------------------------------------------------------------------------------------------
def _resolve(tracking_uri: str, experiment: str, parent_run_id: str | None) -> tuple[Any, Any]:
    """(client, parent run): the given run, or the latest sweep of ``experiment``; ReportError if none."""
    from mlflow.tracking import MlflowClient

    _check_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ReportError(f"no experiment named {experiment!r} in {_masked(tracking_uri)}")
    if parent_run_id is None:
        parent_run_id = _latest_parent(client, exp.experiment_id)
        if parent_run_id is None:
            raise ReportError(f"no sweep found in experiment {experiment!r} (no run there has child runs)")
    return client, _get_run(client, parent_run_id, tracking_uri)


def resolve_parent(tracking_uri: str, experiment: str, parent_run_id: str | None) -> str:
    """The sweep a report is about: ``parent_run_id`` checked to exist, or the latest sweep's parent run id."""
    return _resolve(tracking_uri, experiment, parent_run_id)[1].info.run_id


def sweep_runs(client: Any, parents: Sequence[Any]) -> tuple[list[groups.Run], list[list[int] | None]]:
    """The children of each parent (in job order, parent by parent) with their curves read back, and the seeds
    each sweep asked for (its ``overrides`` tag, groups.asked_seeds)."""
    runs: list[groups.Run] = []
    for i, parent in enumerate(parents):
        pid = parent.info.run_id
        # the parent's own experiment: an explicit --parent is enough to find its children
        children = search_all(client, [parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{pid}'", [])
        if not children:
            raise ReportError(f"run {pid} ({parent.info.run_name}) has no child runs: not a sweep")
        for run in sorted(children, key=groups.job_order):
            steps, losses = _history(client, run.info.run_id)
            final = losses[-1] if losses else _float(run.data.metrics.get("final_loss"))
            runs.append(groups.Run(run, as_asked(run), final, i, steps, losses))
    return runs, [groups.asked_seeds(p.data.tags.get("overrides")) for p in parents]


def make_report(
    tracking_uri: str, experiment: str, parent_run_id: str | Sequence[str] | None, out_dir: Path,
    log_artifacts: bool = True, baseline: str | None = None,
) -> ReportResult:
    """Read a sweep's child runs back from MLflow, group them (tracking.groups), write ``loss_curves.png``,
    ``report.md``, ``report.csv``, ``groups.csv`` and ``contrasts.csv`` into ``out_dir`` and, for one sweep, log
    them to its parent run under ``report/``.

    ``parent_run_id=None`` takes the latest sweep: the most recently started run of ``experiment`` that has
    child runs; several ids make one report of their sweeps together (logged to no run). ``baseline`` is the
    label of the group the others are compared with (default: the first group in job order). Raises
    :class:`ReportError` for a missing store, experiment, sweep, run or group.
    """
    ids = [parent_run_id] if parent_run_id is None or isinstance(parent_run_id, str) else list(parent_run_id)
    client, parent = _resolve(tracking_uri, experiment, ids[0])
    parents = [parent, *(_resolve(tracking_uri, experiment, i)[1] for i in ids[1:])]
    parent_run_id = parent.info.run_id
    log_artifacts = log_artifacts and len(parents) == 1
    runs, asked = sweep_runs(client, parents)
    found = groups.group_runs(runs, asked)
    try:
        contrasts = groups.contrasts(found, baseline)
    except groups.UnknownGroup as e:
        raise ReportError(f"--baseline: {e}") from None
    rows = [_row(r.run, r.losses) for r in runs]
    # best first, in the table; runs without a loss last
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["final_loss"] is None, rows[i]["final_loss"] or 0.0))
    children, rows = [runs[i].run for i in order], [rows[i] for i in order]
    labels = differing_labels([as_asked(r) for r in children])
    labels = [lab or r.info.run_name for lab, r in zip(labels, children, strict=True)]
    if len(set(labels)) < len(labels):  # identical configs (reruns): the short id tells them apart
        labels = [f"{lab} ({r.info.run_id[:8]})" for lab, r in zip(labels, children, strict=True)]
    label_of = dict(zip((r.info.run_id for r in children), labels, strict=True))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, md, csv_path = out_dir / "loss_curves.png", out_dir / "report.md", out_dir / "report.csv"
    names = " + ".join(p.info.run_name for p in parents)
    title = f"{experiment}: {names} ({len(children)} runs" + (f", {len(found)} groups)" if
                                                              len(found) < len(children) else ")")
    # a group of one is its run, labelled as today; a group of several is one entry
    drawn_as = [(g.label if len(g.runs) > 1 else label_of[g.runs[0].run.info.run_id], g) for g in found]
    if len(found) == len(children):  # no repeats: best first, as the table
        drawn_as.sort(key=lambda lg: labels.index(lg[0]))
    fits = []
    for label, g in drawn_as:
        if fit := _fit(client, g.runs[0].run):  # one fit per group: its first seed's
            fits.append((label, fit))
    legend, drawn = sweep_figure(
        [(label, [(r.steps, r.losses, r.run.info.status != "FINISHED") for r in g.runs]) for label, g in drawn_as],
        fits, title, png,
    )
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    where = " + ".join(f"`{p.info.run_id}`" for p in parents)
    summary = f"experiment `{experiment}` · parent run{'s' if len(parents) > 1 else ''} {where} · " + ", ".join(
        f"{n} {s.lower()}" for s, n in sorted(counts.items())
    )
    done = [r for r in rows if r["final_loss"] is not None and r["status"] == "FINISHED"]
    if done:
        best = min(done, key=lambda r: r["final_loss"])
        summary += f" · best: {best['run']}, final loss {best['final_loss']:.4g}"
    overlapped, hosts = groups.overlapping(children)
    if overlapped:
        summary += (f"\n\n{overlapped} of {len(children)} runs overlapped in time with another on the same host "
                    f"({', '.join(sorted(hosts))}): their timings were measured under that load.")
    group_rows = [groups.group_row(g) for g in found]
    groups.write_csv(group_rows, groups.GROUP_COLUMNS, out_dir / groups.GROUPS_CSV)
    groups.write_csv([vars(c) for c in contrasts], groups.CONTRAST_COLUMNS, out_dir / groups.CONTRASTS_CSV)
    extra = groups.markdown(group_rows, contrasts) if len(found) < len(children) else ""
    title_md = f"Sweep report: {names}"
    md.write_text(_markdown(rows, title_md, summary, png.name, extra))
    # a fixed schema for scripts: failure_reason and the full run_id are always there
    groups.write_csv(rows, [*COLUMNS, "failure_reason", "fit", "run_id"], csv_path)
    written = [png, md, csv_path, out_dir / groups.GROUPS_CSV, out_dir / groups.CONTRASTS_CSV]
    if log_artifacts:
        for path in written:
            client.log_artifact(parent_run_id, str(path), ARTIFACT_PATH)
    return ReportResult(parent_run_id, out_dir, png, md, csv_path, rows, len(legend), drawn, labels, found, contrasts,
                        legend)


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/report.py [--experiment E] [--parent ID|latest ...] [--baseline LABEL] [--tracking-uri
    URI] [--out DIR]``."""
    ap = argparse.ArgumentParser(prog="report.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default="backproplab", help="MLflow experiment name (default: %(default)s)")
    ap.add_argument("--parent", action="append", help="parent run id of the sweep, or 'latest' (default); give it "
                    "several times to compare sweeps in one report (written to --out only, logged to no run)")
    ap.add_argument("--baseline", help="the group every other group is compared with, by its label (default: the "
                    "first group in job order)")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)")
    ap.add_argument("--out", type=Path, help="output folder (default: ./reports/<parent run id>/)")
    ap.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    args = ap.parse_args(argv)
    from mlflow.exceptions import MlflowException

    try:
        uri = args.tracking_uri or default_store()[0]
        asked = args.parent or ["latest"]
        parents = [resolve_parent(uri, args.experiment, None if p == "latest" else p) for p in asked]
        out = args.out or Path("reports") / "+".join(p if len(parents) == 1 else p[:8] for p in parents)
        log = not args.no_log and len(parents) == 1
        result = make_report(uri, args.experiment, parents, out, log_artifacts=log, baseline=args.baseline)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except MlflowException as e:  # e.g. a server that does not answer: its message, not a traceback
        print(f"error: MLflow: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1
    where = f", logged to run {result.parent_run_id} under {ARTIFACT_PATH}/" if log else ""
    fits = f", {result.fits} fits" if result.fits else ""
    grouped = f" in {len(result.groups)} groups" if len(result.groups) < len(result.rows) else ""
    print(f"report: {len(result.rows)} runs{grouped}, {result.curves} curves{fits} -> {result.markdown}{where}")
    return 0
