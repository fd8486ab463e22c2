"""Benchmark results as JSON, and the README's tables made from them.

Every benchmark writes its table to ``benchmarks/results/<name>.json`` with what it
takes to judge and repeat it: the command line, the seeds, the date, the machine's
cores and the versions that matter; each figure reported as ``{"mean", "std", "n",
"values"}`` over the seeds (:func:`stats`). The README's result tables are rendered
from those files (:func:`render`) between ``<!-- results:NAME -->`` and
``<!-- /results:NAME -->`` markers by ``python benchmarks/results_io.py --readme``, and
a test checks that the README matches the files, so no figure there is typed by hand.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fogsim.device.memory import BENCHMARKS_REVISION, MODEL_REVISION, REVISIONS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"


def stats(values: list[float | None]) -> dict[str, Any]:
    """Mean, sample std (None for one value) and count over the values that exist."""
    vs = [float(v) for v in values if v is not None]
    return {
        "mean": statistics.fmean(vs) if vs else None,
        "std": statistics.stdev(vs) if len(vs) > 1 else None,
        "n": len(vs),
        "values": vs,
    }


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@functools.cache
def cpu_kernels() -> str:
    """The vector instructions torch's CPU kernels use here, as in every run (AVX2
    unless the environment says otherwise: fogsim pins them when imported)."""
    import torch

    import fogsim  # noqa: F401  (the pin: fogsim/__init__.py)

    return torch.backends.cpu.get_cpu_capability()


def machine() -> dict[str, Any]:
    """Cores, CPU and the vector instructions torch's kernels use (another CPU may sum
    floats in another order, which moves a 20-round run's figures), versions."""
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    versions["cpu"] = cpu_model()
    versions["torch_cpu_capability"] = cpu_kernels()
    try:
        import flwr

        versions["flwr"] = flwr.__version__
    except ImportError:
        pass
    return {"cores": os.cpu_count(), "platform": platform.platform(), **versions}


def write(name: str, rows: list[dict[str, Any]], seeds: list[int], **about: Any) -> Path:
    """``benchmarks/results/<name>.json``: the rows, the seeds, the command line, the
    date and the machine, plus anything in ``about`` (settings of the run)."""
    if not rows:  # a results file with no rows would replace the committed one
        raise SystemExit(f"no results to write: benchmarks/results/{name}.json left as it is")
    RESULTS.mkdir(parents=True, exist_ok=True)
    script = Path(sys.argv[0]).resolve()  # as run from the repository root, from anywhere
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    doc = {
        "benchmark": name,
        "command": " ".join(["python", str(shown), *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "memory_model": MODEL_REVISION,
        "seeds": seeds,
        **about,
        "rows": rows,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def pm(cell: dict[str, Any] | None, scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` (just the mean for one value; ``–`` for none)."""
    if not cell or cell.get("mean") is None:
        return "–"
    text = f"{scale * cell['mean']:.{digits}f}"
    return text + (f" ± {scale * cell['std']:.{digits}f}" if cell.get("std") is not None else "")


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {}
BENCHMARKS = (  # modules
    "dynhp_vs_competitors",
    "dynhp_knobs",
    "strategies",
    "scale_table",
    "memory_floor",
    "research_tables",
    "research_select",
    "fog",
    "energy",
)


def renderer(name: str) -> Callable[[Callable[[dict[str, Any]], str]], Callable]:
    def deco(fn: Callable[[dict[str, Any]], str]) -> Callable:
        RENDERERS[name] = fn
        return fn

    return deco


def render(name: str) -> str:
    """The markdown a results file stands for in the README (ends with its source)."""
    doc = json.loads((RESULTS / f"{name}.json").read_text())
    body = RENDERERS[name](doc)
    seeds = f"seeds {', '.join(map(str, doc['seeds']))}, " if doc["seeds"] else ""
    return (
        f"{stale(doc)}{body}\n\n<sub>from `benchmarks/results/{name}.json`: "
        f"`{doc['command']}`, {seeds}{doc['date'][:10]}, {doc['machine']['cores']} cores</sub>"
    )


def revision_of(doc: dict[str, Any], row: dict[str, Any] | None = None) -> int:
    """The memory model revision a results file, or one of its rows, was measured
    under: a row's own (files that merge rows of several runs stamp each row), else
    the file's; files without one predate revision 2."""
    return (row or {}).get("memory_model", doc.get("memory_model", 1))


def stale(doc: dict[str, Any]) -> str:
    """A warning above a table measured, wholly or in some rows, under a memory model
    revision older than the last one that moved a benchmark's figure
    (``BENCHMARKS_REVISION``), naming what has changed since."""
    revisions = [revision_of(doc, r) for r in doc["rows"]] or [revision_of(doc)]
    revision = min(revisions)
    if revision >= BENCHMARKS_REVISION:
        return ""
    changes = "; ".join(REVISIONS[r] for r in range(revision + 1, MODEL_REVISION + 1))
    old = sum(r < BENCHMARKS_REVISION for r in revisions)
    if old < len(revisions):
        return (
            f"> **Partly re-run under the current memory model** (revision {MODEL_REVISION};"
            f" no revision since {BENCHMARKS_REVISION} moved a figure of these tables that was"
            " re-run to check: `memory.BENCHMARKS_REVISION`)."
            f" {old} of {len(revisions)} rows were measured under revision {revision} (their "
            f"rows say so); since then: {changes}. Those rows may move when they are re-run.\n\n"
        )
    return (
        f"> **Not yet re-run under the current memory model.** Measured under revision "
        f"{revision}; since then: {changes}. These figures may move when it is re-run.\n\n"
    )


MARKED = re.compile(
    r"(<!-- results:(?P<name>[\w-]+) -->\n)(.*?)(\n<!-- /results:(?P=name) -->)", re.S
)


def readme_blocks(text: str) -> dict[str, str]:
    """name -> the rendered block the README holds between its markers."""
    return {m.group("name"): m.group(3) for m in MARKED.finditer(text)}


def update_readme() -> list[str]:
    """Re-render every marked block of the README from its results file."""
    import importlib

    for module in BENCHMARKS:
        importlib.import_module(module)  # each registers its renderer
    text = README.read_text()
    names = list(readme_blocks(text))
    text = MARKED.sub(lambda m: m.group(1) + render(m.group("name")) + m.group(4), text)
    README.write_text(text)
    return names


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", action="store_true", help="re-render the README's tables")
    args = ap.parse_args()
    if args.readme:
        sys.path.insert(0, str(Path(__file__).parent))
        import results_io  # the module the benchmarks register their renderers with,
        # not this __main__ copy of it

        print("rendered:", ", ".join(results_io.update_readme()) or "no marked tables")
