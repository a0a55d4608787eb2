"""A sweep's lesson page: each run's way beside what it did. For each run, in the sweep's order, the page shows
the code of its training step (syntax-highlighted), its loss curve (every section on the same axes), its loop
time per step, its final loss and how far its first-step gradients are from autograd's. The report's overlay and
a table come first. The sine edition adds each run's fit over sin(x) and its formula.

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
from backproplab.tracking.report import _history, search_all
from backproplab.tracking.store import JOB_TAG, PARENT_TAG

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


def _curve(steps: list[int], losses: list[float], xlim: tuple[float, float], ylim: tuple[float, float],
           log_steps: bool) -> str:
    """A small loss curve on the page's common axes, as base64 PNG; on a log step axis (step + 1), as the report
    draws them, when the runs' lengths differ fourfold or more."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6, 2.4), dpi=80)
    ax = fig.add_subplot()
    if steps:
        ax.plot([s + 1 for s in steps] if log_steps else steps, losses, linewidth=1.2)
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


def _read(client: Any, run: Any, into: str) -> dict[str, Any]:
    """What the page shows of one run, read back from MLflow."""
    run_id, metrics, tags = run.info.run_id, run.data.metrics, run.data.tags
    step_file = _artifact(client, run_id, f"code/{STEP}", into)
    fit_png = _artifact(client, run_id, "fit.png", into) if "fit.formula" in tags else None
    steps, losses = _history(client, run_id)
    return {
        "name": run.info.run_name, "status": run.info.status, "reason": tags.get("failure_reason", ""),
        "step": json.loads(step_file.read_text()) if step_file else {},
        "steps": steps, "losses": losses,
        "final": metrics.get("final_loss", losses[-1] if losses else None),
        "step_ms": metrics.get("time/step_ms"), "agreement": metrics.get("verify/grad_rel_diff"),
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
    status = "" if way["status"] == "FINISHED" else (
        f'<p class="failed">{way["status"]}: {html.escape(way["reason"])}</p>')
    side = [f'<img alt="loss curve of {html.escape(way["name"])}" src="data:image/png;base64,{curve}">',
            "<dl>", f"<dt>loop per step</dt><dd>{_number(way['step_ms'])} ms</dd>",
            f"<dt>final loss</dt><dd>{_number(way['final'], 4)}</dd>",
            f"<dt>gradients vs autograd</dt><dd>{_number(way['agreement'], 2)}</dd>", "</dl>"]
    if way["fit"]:
        side += [f'<img alt="fit of {html.escape(way["name"])}" src="data:image/png;base64,{way["fit"]}">',
                 f"<p class=\"what\">{html.escape(way['formula'] or '')}</p>"]
    return (f'<section id="{html.escape(way["name"])}"><h2>{html.escape(way["name"])}</h2>'
            f'<p class="what">{html.escape(what)}</p><p class="about">{html.escape(s.get("about", ""))}</p>{status}'
            f'<div class="way"><div>{_code(s.get("regions", []))}</div><div>{"".join(side)}</div></div></section>')


def _table(ways: list[dict[str, Any]]) -> str:
    rows = ["<table><tr><th>run</th><th>trainer · model · optim</th><th>final loss</th><th>ms / step</th>"
            "<th>gradients vs autograd</th></tr>"]
    for w in ways:
        what = " · ".join(str(w["step"].get(k, "")) for k in ("trainer", "model", "optim"))
        rows.append(f'<tr><td><a href="#{html.escape(w["name"])}">{html.escape(w["name"])}</a></td>'
                    f"<td>{html.escape(what)}</td><td class=n>{_number(w['final'], 4)}</td>"
                    f"<td class=n>{_number(w['step_ms'])}</td><td class=n>{_number(w['agreement'], 2)}</td></tr>")
    return "\n".join([*rows, "</table>"])


def make_lesson(tracking_uri: str, parent_run_id: str, out_dir: Path, log_artifact: bool = True) -> Path:
    """Write ``out_dir/lesson.html`` for the sweep whose parent run is ``parent_run_id``, and log it to that run."""
    from mlflow.tracking import MlflowClient
    from pygments.formatters import HtmlFormatter

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per small file: noise
    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    children = search_all(client, [parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'", [])
    children.sort(key=lambda r: (int(r.data.tags.get(JOB_TAG, 1 << 30)), r.info.start_time))
    with tempfile.TemporaryDirectory() as into:
        ways = [_read(client, run, into) for run in children]
    losses = [v for w in ways for v in w["losses"] if v > 0 and math.isfinite(v)]
    lengths = [len(w["steps"]) for w in ways if w["steps"]]
    log_steps = bool(lengths) and max(lengths) > 4 * min(lengths)  # the report's rule (tracking/figures.py)
    last = float(max((max(w["steps"], default=0) for w in ways), default=1)) or 1.0
    xlim = (1.0, last + 1) if log_steps else (0.0, last)
    ylim = (min(losses, default=1e-3) / 2, max(losses, default=1.0) * 2)
    overlay = out_dir / "loss_curves.png"  # the report's figure: every curve on one plot
    top = (f'<img alt="every run\'s loss curve" src="data:image/png;base64,'
           f'{base64.b64encode(overlay.read_bytes()).decode()}">' if overlay.is_file() else "")
    title = html.escape(parent.info.run_name or parent_run_id)
    page = "\n".join([
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>lesson: {title}</title>",
        f"<style>{CSS}{HtmlFormatter().get_style_defs('.hl')}</style></head><body>",
        f"<h1>One computation, {len(ways)} ways: {title}</h1>",
        f'<p class="what">{html.escape(parent.data.tags.get("mlflow.note.content", ""))}</p>',
        top, _table(ways),
        *(_section(w, _curve(w["steps"], w["losses"], xlim, ylim, log_steps)) for w in ways),
        "</body></html>"])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / NAME
    path.write_text(page)
    if log_artifact:
        client.log_artifact(parent_run_id, str(path))
    return path
