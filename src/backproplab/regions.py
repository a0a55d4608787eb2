"""The code of one training step, as a sweep's lesson page shows it: regions of the package's source, marked by
comments, never by line numbers::

    # lesson: <name> [<name> ...]
    ...the lines of the region...
    # lesson: end

A trainer's yaml says what its step is made of (``supports.lesson``): by model, a list of ``<file>:<region>``
(files under src/backproplab; ``default`` for the models not listed). A region named in several places of a file
is their parts, in order. Plain Python: the job reads regions to log its code, the page's builder to show it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
MARK = re.compile(r"^\s*# lesson: (?P<names>.+?)\s*$")


def parse(text: str) -> dict[str, list[tuple[int, str]]]:
    """Every region of a source file: name -> its parts as (first line number, text). A region's parts are
    dedented together, so a part that continues a loop keeps its place in it."""
    raw: dict[str, list[tuple[int, list[str]]]] = {}
    open_names: list[str] = []
    start, lines = 0, []
    for n, line in enumerate(text.splitlines(), 1):
        mark = MARK.match(line)
        if mark and mark["names"] == "end":
            for name in open_names:
                raw.setdefault(name, []).append((start, lines))
            open_names, lines = [], []
        elif mark:
            open_names, start, lines = mark["names"].split(), n + 1, []
        elif open_names:
            lines.append(line)
    if open_names:
        raise ValueError(f"region {' '.join(open_names)} is opened but never closed (# lesson: end)")
    out = {}
    for name, parts in raw.items():
        indent = min((len(ln) - len(ln.lstrip()) for _, part in parts for ln in part if ln.strip()), default=0)
        out[name] = [(first, "\n".join(ln[indent:] for ln in part).strip("\n")) for first, part in parts]
    return out


def picks(lesson: Mapping[str, Sequence[str]], model: str) -> list[tuple[str, str]]:
    """The (file, region) a run of ``model`` shows, from a trainer's ``supports.lesson``."""
    entries = lesson.get(model, lesson.get("default", ()))
    return [(entry.split(":")[0], entry.split(":")[1].replace("{model}", model)) for entry in entries]


def step_code(sources: Mapping[str, str], chosen: Sequence[tuple[str, str]]) -> list[dict[str, object]]:
    """The regions of ``chosen`` in ``sources`` (file -> text), as {file, region, line, code}: KeyError when one
    is missing (a test holds every trainer and model to have theirs)."""
    out = []
    for file, region in chosen:
        found = parse(sources[file])
        if region not in found:
            raise KeyError(f"{file} has no region '# lesson: {region}'")
        for line, code in found[region]:
            out.append({"file": file, "region": region, "line": line, "code": code})
    return out


def read(files: Sequence[str]) -> dict[str, str]:
    """The package's source files, by their path under src/backproplab."""
    return {file: (PACKAGE / file).read_text() for file in dict.fromkeys(files)}


def module_file(module: str) -> str:
    """A module's file, as a path under src/backproplab (``backproplab.trainers.numpy`` -> trainers/numpy.py)."""
    return "/".join(module.split(".")[1:]) + ".py"


def summary(source: str) -> str:
    """The first paragraph of a module's docstring, on one line: what the trainer is."""
    import ast

    doc = (ast.get_docstring(ast.parse(source)) or "").strip()
    return " ".join(doc.split("\n\n")[0].split()).replace("``", "") if doc else ""
