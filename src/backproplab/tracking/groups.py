"""A sweep's runs in groups: the runs whose params are equal except ``seed``. Each group gets a label (the keys
that differ between groups, as the report labels runs), its seeds (those asked for, from the sweep's own
``seed`` override, and those missing), its spread (backproplab.stats) and its contrast with a baseline group.

Groups come from the params as asked (``trainer.threads=auto`` reads ``auto``), never from the overrides'
text, so ``optim=adam`` and ``optim=adam optim.lr=1e-3`` are one group; sweeps recorded before groups existed
group the same way. The sweep callback tags every child with its group's label (``backproplab.group``), so
that MLflow's own UI can group by it.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backproplab import stats
from backproplab.tracking.labels import IGNORED_PREFIXES, LOCATION_SUFFIXES, differing_labels
from backproplab.tracking.store import HOST_TAG, JOB_TAG

SEED = "seed"
GROUPS_CSV, CONTRASTS_CSV = "groups.csv", "contrasts.csv"
METRICS = ("final_loss", "step_ms")


class UnknownGroup(ValueError):
    """A baseline that is no group's label."""


@dataclass
class Run:
    """What a group needs of one child run, read back from MLflow by the report."""

    run: Any  # the MLflow run
    params: dict[str, str]  # as asked (tracking.labels.as_asked)
    final: float | None  # its last logged loss
    parent: int = 0  # which of the report's parents it belongs to
    steps: list[int] = field(default_factory=list)  # its curve
    losses: list[float] = field(default_factory=list)

    @property
    def seed(self) -> int | None:
        try:
            return int(self.params[SEED])
        except (KeyError, ValueError):
            return None

    @property
    def finished(self) -> bool:
        return self.run.info.status == "FINISHED" and self.final is not None and math.isfinite(self.final)

    def value(self, metric: str) -> float | None:
        return self.final if metric == "final_loss" else self.run.data.metrics.get(f"time/{metric}")


@dataclass
class Group:
    label: str
    runs: list[Run] = field(default_factory=list)
    asked: list[int] = field(default_factory=list)  # the seeds the sweep(s) asked this config for

    def per_seed(self, metric: str) -> dict[int, float]:
        """Each seed's value among the finished runs (a seed run twice, across sweeps: its geometric mean)."""
        by_seed: dict[int, list[float]] = {}
        for r in self.runs:
            if r.finished and r.seed is not None and (v := r.value(metric)) is not None and v > 0:
                by_seed.setdefault(r.seed, []).append(v)
        return {s: math.exp(sum(map(math.log, vs)) / len(vs)) for s, vs in by_seed.items()}

    def values(self, metric: str) -> list[float]:
        return [v for r in self.runs if r.finished and (v := r.value(metric)) is not None]

    def count(self, status: str) -> int:
        return sum(r.run.info.status == status for r in self.runs)

    def missing(self) -> dict[int, str]:
        """Each asked seed without a finished run, and why: its run's status, or no run at all."""
        done = {r.seed for r in self.runs if r.finished}
        status = {r.seed: r.run.info.status for r in self.runs if not r.finished}
        return {s: status.get(s, "no run") for s in self.asked if s not in done}


def seed_overrides(text: str) -> list[str]:
    """The ``seed`` overrides in a tag that joined a sweep's overrides with spaces: an override may hold spaces
    (``seed=range(0, 64)``), so each takes the following words until Hydra's parser accepts it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, words, found = OverridesParser.create(), text.split(" "), []
    for i, word in enumerate(words):
        if re.match(rf"[+~]*{SEED}=", word):
            for j in range(i + 1, len(words) + 1):
                try:
                    parser.parse_overrides([" ".join(words[i:j])])
                except Exception:
                    continue
                found.append(" ".join(words[i:j]))
                break
    return found


def asked_seeds(overrides: str | None, params: Mapping[str, Any] | None = None) -> list[int] | None:
    """The seeds a sweep asked for, in the order its jobs run them: from its parent's ``overrides`` tag and the
    sweeper's ``params`` (the later wins, as in Hydra's sweeper), read with Hydra's parser (``seed=range(0,64)``,
    ``seed=3,1,2``, ``seed=7``; ``shuffle(...)`` in its listed order). None when the sweep did not name the
    seed, or named it as something other than integers (Optuna's intervals)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    listed = seed_overrides(overrides or "") + [f"{k}={v}" for k, v in (params or {}).items() if k == SEED]
    if not listed:
        return None
    try:
        o = OverridesParser.create().parse_overrides(listed[-1:])[0]
        if not o.is_sweep_override():
            return [int(o.value())]
        o.value().shuffle = False  # shuffle(...) orders its jobs at random: the listed order names the first
        return [int(v) for v in o.sweep_string_iterator()]
    except Exception:
        return None


def _key(params: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(
        (k, v) for k, v in params.items()
        if k != SEED and not k.startswith(IGNORED_PREFIXES) and not k.endswith(LOCATION_SUFFIXES)
    ))


def _base_name(run: Any) -> str:
    """A run's name without its seed: ``numpy seed=3`` -> ``numpy``."""
    return re.sub(r"\s*\bseed=\S+", "", run.info.run_name or "").strip() or run.info.run_id[:8]


def group_runs(runs: Sequence[Run], asked: Sequence[list[int] | None]) -> list[Group]:
    """``runs`` (in job order, parent by parent) in groups, in the order of their first run. ``asked[i]`` is the
    seeds parent i asked for (None: each group expects the seeds it has)."""
    groups: dict[tuple, Group] = {}
    for r in runs:
        g = groups.setdefault(_key(r.params), Group(""))
        g.runs.append(r)
        for s in (asked[r.parent] if r.parent < len(asked) and asked[r.parent] is not None else [r.seed]):
            if s is not None and s not in g.asked:
                g.asked.append(s)
    found = list(groups.values())
    labels = differing_labels([{k: v for k, v in g.runs[0].params.items() if k != SEED} for g in found])
    for g, label in zip(found, labels, strict=True):
        g.label = label or _base_name(g.runs[0].run)
    if len(found) == 1 and len({r.seed for r in found[0].runs}) > 1:
        found[0].label += " (only the seed varies)"
    seen: dict[str, int] = {}
    for g in found:  # two groups that read the same (keys hidden from labels): numbered, never merged
        seen[g.label] = seen.get(g.label, 0) + 1
        if seen[g.label] > 1:
            g.label += f" #{seen[g.label]}"
    return found


def job_order(run: Any) -> tuple[int, int]:
    """A child's place in its sweep: its job number, then its start."""
    return int(run.data.tags.get(JOB_TAG, 1 << 30)), run.info.start_time


def spans(numbers: Sequence[int]) -> str:
    """``0,1,2,3,5`` -> ``0–3, 5``."""
    out: list[str] = []
    for n in sorted(set(numbers)):
        if out and out[-1].split("–")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('–')[0]}–{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


# -- the tables ------------------------------------------------------------------------------------------------
GROUP_COLUMNS = (
    "group", "n", "seeds", "missing", "final_loss_gmean", "final_loss_ci_low", "final_loss_ci_high",
    "final_loss_median", "final_loss_min", "final_loss_max", "step_ms_median", "step_ms_q1", "step_ms_q3",
    "failed", "killed",
)
CONTRAST_COLUMNS = ("metric", "group", "baseline", "pairs", "ratio", "ci_low", "ci_high", "test", "p", "p_min")


def group_row(g: Group) -> dict[str, Any]:
    loss, step = stats.spread(g.values("final_loss")), stats.quartiles(g.values("step_ms"))
    missing = g.missing()
    return {
        "group": g.label, "n": loss.n, "seeds": spans([r.seed for r in g.runs if r.finished and r.seed is not None]),
        "missing": ", ".join(f"{s} ({why})" for s, why in sorted(missing.items())),
        "final_loss_gmean": loss.gmean, "final_loss_ci_low": loss.ci_low, "final_loss_ci_high": loss.ci_high,
        "final_loss_median": loss.median, "final_loss_min": loss.min, "final_loss_max": loss.max,
        "step_ms_median": step.median, "step_ms_q1": step.q1, "step_ms_q3": step.q3,
        "failed": g.count("FAILED"), "killed": g.count("KILLED"), "constant": loss.constant,
    }


def contrasts(groups: Sequence[Group], baseline: str | None = None) -> list[stats.Contrast]:
    """Every group against the baseline (``baseline``'s label, or the first group), on each metric."""
    if len(groups) < 2:
        return []
    base = next((g for g in groups if g.label == baseline), None) if baseline else groups[0]
    if base is None:
        raise UnknownGroup(f"no group labelled {baseline!r}; the groups are: " + ", ".join(g.label for g in groups))
    return [
        stats.contrast(m, g.label, g.per_seed(m), base.label, base.per_seed(m))
        if any(r.seed is not None for r in g.runs + base.runs)
        else stats.contrast(m, g.label, dict(enumerate(g.values(m))), base.label,  # no seeds: nothing to pair
                            {-1 - i: v for i, v in enumerate(base.values(m))})
        for m in METRICS for g in groups if g is not base
    ]


def write_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str], path: Path) -> None:
    """One row per dict, the given columns; a float in full (repr), None as an empty cell."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else repr(r[k]) if isinstance(r[k], float) else r[k]
                        for k in columns})


def _g(x: float | None, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}g}"


def markdown(rows: Sequence[dict[str, Any]], found: Sequence[stats.Contrast]) -> str:
    """The group table and one verdict line per contrast, as Markdown, saying what each number is."""
    lines = [
        "## Groups", "",
        "A group is the runs whose params are equal except `seed`. Final loss: geometric mean over the group's "
        "finished seeds, with its 95% t-interval in log space (exp(mean ± t·sd/√n) of log loss); step time: "
        "median and interquartile range over runs. FAILED and KILLED runs are counted, never averaged.", "",
        "| group | n | seeds | final loss (geometric mean) | 95% CI | median | min – max | ms / step: median "
        "(IQR) | failed | killed |",
        "|---|---:|---|---:|---|---:|---|---|---:|---:|",
    ]
    for r in rows:
        seeds = r["seeds"] + (f" (missing {r['missing']})" if r["missing"] else "")
        ci = (f"{_g(r['final_loss_ci_low'])} – {_g(r['final_loss_ci_high'])}" if r["final_loss_ci_low"] is not None
              else "")
        lines.append(
            f"| {r['group']} | {r['n']} | {seeds} | {_g(r['final_loss_gmean'], 4)} | {ci} "
            f"| {_g(r['final_loss_median'], 4)} | {_g(r['final_loss_min'])} – {_g(r['final_loss_max'])} "
            f"| {_g(r['step_ms_median'])} ({_g(r['step_ms_q1'])} – {_g(r['step_ms_q3'])}) "
            f"| {r['failed']} | {r['killed']} |")
    fixed = [r["group"] for r in rows if r["constant"]]
    if fixed:
        lines += ["", "Every seed gave the same final loss in " + ", ".join(f"`{g}`" for g in fixed)
                  + ": the seed does not vary this config (its start is fixed), so its interval has zero width "
                  "and says nothing about other seeds."]
    if found:
        lines += [
            "", "## Contrasts", "",
            f"Each group against `{found[0].baseline}`, seed by seed over the seeds both have: ratio = geometric "
            "mean of the per-seed ratios, with its paired-t 95% interval on the log ratios; p from the exact "
            "two-sided sign-flip test on the log ratios (Welch's t-test on log values where no seed is shared). "
            f"{len(found)} contrasts, p-values as they are (not corrected for the number made).", "",
        ]
        lines += [f"- {stats.verdict(c)}" for c in found]
    return "\n".join(lines) + "\n"


def overlapping(runs: Sequence[Any]) -> tuple[int, set[str]]:
    """(how many runs overlapped another in time on the same host, those hosts): their timings were measured
    beside each other's load."""
    by_host: dict[str, list[tuple[int, int]]] = {}
    for r in runs:
        if r.info.start_time and r.info.end_time:
            by_host.setdefault(r.data.tags.get(HOST_TAG, "?"), []).append((r.info.start_time, r.info.end_time))
    count, hosts = 0, set()
    for host, spans_ in by_host.items():
        spans_.sort()
        hit = [False] * len(spans_)
        for i, (_, end) in enumerate(spans_):
            j = i + 1
            while j < len(spans_) and spans_[j][0] < end:  # sorted by start: the later ones that began before i ended
                hit[i] = hit[j] = True
                j += 1
        if any(hit):
            count += sum(hit)
            hosts.add(host)
    return count, hosts
