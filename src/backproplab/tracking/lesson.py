"""A sweep's lesson page: each way beside what it did. For each group of runs (tracking/groups.py: the runs equal
but for their seed; a sweep without repeats has one run a group), in the sweep's order, the page shows the code
of its training step once (syntax-highlighted), its loss curve or, over several seeds, their band (every
section on the same axes), its n, its loop time per step, its final loss and how far its first-step gradients
are from autograd's. The report's overlay and a table come first. The sine edition adds the fit over sin(x) and
its formula.

One self-contained HTML file: inline CSS and images, no JavaScript, nothing fetched. It is logged to the parent
run as ``lesson.html`` and written beside the report. Everything is read back from MLflow (each run's
``code/step.json``, metrics, ``fit.png``), so the builder imports no trainer framework and works the same for
jobs that ran on Slurm.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from backproplab.tracking.code import STEP
from backproplab.tracking.figures import Trace, draw_group, step_axis
from backproplab.tracking.groups import Group, group_row, group_runs
from backproplab.tracking.report import sweep_runs

NAME = "lesson.html"
CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.3rem; margin-bottom: .2rem; } h3 { font-size: .9rem; color: #555; }
.about { color: #444; margin-top: 0; } .what { font-family: monospace; color: #666; }
section { border-top: 1px solid #ddd; padding-top: .8rem; margin-top: 1.5rem; }
.way { display: grid; grid-template-columns: minmax(0, 3fr) minmax(16rem, 1fr); gap: 1.5rem; align-items: start; }
.hl { background: #f8f8f8; padding: .5rem .8rem; border-radius: 4px; overflow-x: auto; font-size: .8rem; }
.hl pre { margin: 0; } dl { display: grid; grid-template-columns: auto auto; gap: .2rem .8rem; font-size: .9rem; }
dt { color: #666; } dd { margin: 0; font-family: monospace; } img { max-width: 100%; }
table { border-collapse: collapse; font-size: .9rem; } td, th { padding: .2rem .6rem; border-bottom: 1px solid #eee; }
td.n { text-align: right; font-family: monospace; } .failed { color: #b00; }
"""


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


def _curve(runs: list[Trace], xlim: tuple[float, float], ylim: tuple[float, float], log_steps: bool) -> str:
    """A small loss curve (or a group's band over its seeds, figures.draw_group) on the page's common axes, as
    base64 PNG; on a log step axis (step + 1), as the report draws them, when the runs' lengths differ fourfold
    or more."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6, 2.4), dpi=80)
    ax = fig.add_subplot()
    runs = [r for r in runs if r[0]]
    if runs:
        draw_group(ax, "", runs, log_steps)
    ax.set_yscale("log")
    if log_steps:
        ax.set_xscale("log")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel("step + 1 (log scale)" if log_steps else "step", fontsize="small")
    ax.set_ylabel("train/loss", fontsize="small")
    ax.tick_params(labelsize="x-small")
    ax.grid(True, alpha=0.3)
    fig.subplots_adjust(left=0.2, right=0.96, bottom=0.2, top=0.95)
    return _png(fig)


def _artifact(client: Any, run_id: str, path: str, into: str) -> Path | None:
    try:
        return Path(client.download_artifacts(run_id, path, into))
    except Exception:  # an older run without it, or its artifacts gone: the section says less
        return None


def _read(client: Any, g: Group, into: str) -> dict[str, Any]:
    """What the page shows of one group, read back from MLflow: its first run's code and fit, every run's curve."""
    first = g.runs[0].run
    run_id, tags = first.info.run_id, first.data.tags
    step_file = _artifact(client, run_id, f"code/{STEP}", into)
    fit_png = _artifact(client, run_id, "fit.png", into) if "fit.formula" in tags else None
    several = len(g.runs) > 1
    row = group_row(g)  # the report's own numbers for the group
    # the gradient check runs once per group: whichever of its runs has it
    agreement = next((a for r in g.runs if (a := r.run.data.metrics.get("verify/grad_rel_diff")) is not None), None)
    failed = [r.run.info.status for r in g.runs if r.run.info.status != "FINISHED"]
    problem = ""  # what did not finish: the run's status and reason, or how many of the group's runs
    if failed and several:
        problem = f"{len(failed)} of {len(g.runs)} runs did not finish ({', '.join(sorted(set(failed)))})"
    elif failed:
        problem = f"{failed[0]}: {tags.get('failure_reason', '')}"
    return {
        "name": g.label if several else first.info.run_name, "n": len(g.runs), "problem": problem,
        "step": json.loads(step_file.read_text()) if step_file else {},
        "runs": [(r.steps, r.losses, r.run.info.status != "FINISHED") for r in g.runs],
        "final": row["final_loss_gmean"] if several else g.runs[0].final,
        "interval": (row["final_loss_ci_low"], row["final_loss_ci_high"]) if several else None,
        "step_ms": row["step_ms_median"], "agreement": agreement,
        "formula": tags.get("fit.formula"),
        "fit": base64.b64encode(fit_png.read_bytes()).decode() if fit_png else None,
    }


def _code(regions: list[dict[str, Any]]) -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    blocks = []
    for r in regions:
        head = f"{html.escape(r['file'])}, line {r['line']} ({html.escape(r['region'])})"
        blocks.append(f"<h3>{head}</h3>" + highlight(r["code"], PythonLexer(), HtmlFormatter(cssclass="hl")))
    return "\n".join(blocks) or "<p>(this run's step is not marked in its source)</p>"


def _section(way: dict[str, Any], curve: str) -> str:
    s = way["step"]
    what = " · ".join(str(s[k]) for k in ("trainer", "model", "optim") if k in s)
    status = f'<p class="failed">{html.escape(way["problem"])}</p>' if way["problem"] else ""
    final = f"<dt>final loss</dt><dd>{_number(way['final'], 4)}</dd>"
    if way["n"] > 1:  # a group over seeds: which centre, which interval
        low, high = way["interval"] or (None, None)
        final = (f"<dt>seeds</dt><dd>{way['n']}</dd><dt>final loss, geometric mean</dt><dd>"
                 f"{_number(way['final'], 4)}</dd><dt>its 95% t-interval</dt><dd>{_number(low)} – {_number(high)}</dd>")
    side = [f'<img alt="loss curve of {html.escape(way["name"])}" src="data:image/png;base64,{curve}">',
            "<dl>", f"<dt>loop per step{' (median)' if way['n'] > 1 else ''}</dt><dd>{_number(way['step_ms'])} ms</dd>",
            final,
            f"<dt>gradients vs autograd</dt><dd>{_number(way['agreement'], 2)}</dd>", "</dl>"]
    if way["fit"]:
        side += [f'<img alt="fit of {html.escape(way["name"])}" src="data:image/png;base64,{way["fit"]}">',
                 f"<p class=\"what\">{html.escape(way['formula'] or '')}</p>"]
    return (f'<section id="{html.escape(way["name"])}"><h2>{html.escape(way["name"])}</h2>'
            f'<p class="what">{html.escape(what)}</p><p class="about">{html.escape(s.get("about", ""))}</p>{status}'
            f'<div class="way"><div>{_code(s.get("regions", []))}</div><div>{"".join(side)}</div></div></section>')


def _table(ways: list[dict[str, Any]]) -> str:
    several = any(w["n"] > 1 for w in ways)
    rows = [f"<table><tr><th>{'group' if several else 'run'}</th><th>trainer · model · optim</th>"
            + ("<th>n</th><th>final loss (geometric mean)</th><th>ms / step (median)</th>" if several else
               "<th>final loss</th><th>ms / step</th>") + "<th>gradients vs autograd</th></tr>"]
    for w in ways:
        what = " · ".join(str(w["step"].get(k, "")) for k in ("trainer", "model", "optim"))
        rows.append(f'<tr><td><a href="#{html.escape(w["name"])}">{html.escape(w["name"])}</a></td>'
                    f"<td>{html.escape(what)}</td>" + (f"<td class=n>{w['n']}</td>" if several else "")
                    + f"<td class=n>{_number(w['final'], 4)}</td>"
                    f"<td class=n>{_number(w['step_ms'])}</td><td class=n>{_number(w['agreement'], 2)}</td></tr>")
    return "\n".join([*rows, "</table>"])


def make_lesson(tracking_uri: str, parent_run_id: str, out_dir: Path, log_artifact: bool = True,
                found: list[Group] | None = None) -> Path:
    """Write ``out_dir/lesson.html`` for the sweep whose parent run is ``parent_run_id``, and log it to that run.
    ``found``: its runs in groups as the report has just read them (each run's curve is read once, not twice: a
    64-seed sweep's second read cost it a second); else read here."""
    from mlflow.tracking import MlflowClient
    from pygments.formatters import HtmlFormatter

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per small file: noise
    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    if found is None:
        found = group_runs(*sweep_runs(client, [parent]))
    runs = [r for g in found for r in g.runs]
    with tempfile.TemporaryDirectory() as into:
        ways = [_read(client, g, into) for g in found]
    traces = [t for w in ways for t in w["runs"]]
    losses = [v for _, values, _ in traces for v in values if v > 0 and math.isfinite(v)]
    log_steps = step_axis(traces)  # the report's rule
    last = float(max((max(steps, default=0) for steps, _, _ in traces), default=1)) or 1.0
    xlim = (1.0, last + 1) if log_steps else (0.0, last)
    ylim = (min(losses, default=1e-3) / 2, max(losses, default=1.0) * 2)
    overlay = out_dir / "loss_curves.png"  # the report's figure: every curve on one plot
    top = (f'<img alt="every run\'s loss curve" src="data:image/png;base64,'
           f'{base64.b64encode(overlay.read_bytes()).decode()}">' if overlay.is_file() else "")
    title = html.escape(parent.info.run_name or parent_run_id)
    page = "\n".join([
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>lesson: {title}</title>",
        f"<style>{CSS}{HtmlFormatter().get_style_defs('.hl')}</style></head><body>",
        f"<h1>One computation, {len(ways)} ways: {title}</h1>" if len(ways) == len(runs) else
        f"<h1>One computation, {len(ways)} way{'s' if len(ways) > 1 else ''} over {len(runs)} runs: {title}</h1>",
        f'<p class="what">{html.escape(parent.data.tags.get("mlflow.note.content", ""))}</p>',
        top, _table(ways),
        *(_section(w, _curve(w["runs"], xlim, ylim, log_steps)) for w in ways),
        "</body></html>"])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / NAME
    path.write_text(page)
    if log_artifact:
        client.log_artifact(parent_run_id, str(path))
    return path
