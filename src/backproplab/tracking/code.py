"""The code a run ran, in its record: the source files of its step (``code/`` artifacts) and the step itself
(``code/step.json``: the regions the lesson page shows, with a sentence on the way), named in one line of the
run's description. Files, not an environment: it costs a few milliseconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from backproplab.regions import PACKAGE

STEP = "step.json"


def folder(step: dict[str, Any], into: Path) -> Path:
    """``into/code/``: the step's whole source files (as paths under src/backproplab) and step.json."""
    code = into / "code"
    for file in step["files"]:
        (code / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGE / file, code / file)
    (code / STEP).write_text(json.dumps(step, indent=1))
    return code


def line(step: dict[str, Any]) -> str:
    """The description's line: which files the run's step is in, and which regions of them."""
    regions = ", ".join(dict.fromkeys(f"{r['file']}:{r['region']}" for r in step["regions"]))
    return f"Code (artifacts code/): {', '.join(step['files'])}; its step: {regions or 'not marked'}"
