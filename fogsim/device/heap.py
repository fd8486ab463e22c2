"""Training memory measured from the process heap itself, to check the memory model.

``heapcount.c`` (next to this file) is a malloc/free counter loaded with
``LD_PRELOAD``: every block of the malloc family adds its usable size, every free
subtracts it, so ``current`` is the live heap of the process and ``peak`` its maximum
since the last reset; anonymous ``mmap`` calls made outside malloc are counted apart
(none happen during a step). It is compiled with the system C compiler on first use
into ``$XDG_CACHE_HOME/fogsim`` (``~/.cache/fogsim``).

A measurement runs in a fresh Python under the counter (``PYTHONMALLOC=malloc`` so
Python objects are counted too, one torch thread as a client actor has), which then
runs :func:`fogsim.device.heap_worker.main`:

- :func:`measure_steps`: per point (widths, batch, optimizer), a few warm-up steps so
  optimizer state exists and library caches have settled, then the peak of one full
  step (zero_grad, forward, loss, backward, optimizer step, the batch indexed inline
  from the data as the loops do, so its copy dies with the graph) above the heap
  alive before it, plus the nbytes of the parameters and optimizer state that were
  alive: what :func:`fogsim.device.memory.training_memory` models. And before those,
  after steps at another batch, the point's first step at its own (a new shape, as a
  pruning or a new batch gives: oneDNN builds its primitives), measured the same way
  less what it left in the process's caches: on narrow CNNs a training run's highest
  step (the checks take the higher of it and a steady step).
- :func:`measure_dynhp`: a real ``train_dynhp`` run with the heap read at each phase
  boundary (``on_phase``): per training step, pruning check and budget fit, the peak
  above the heap before it, plus the parameters, gradients and optimizer state alive
  then. What a phase leaves allocated for good beyond those tensors (``kept``: a
  library cache grown on a new shape, e.g. MKL's GEMM buffer pool or oneDNN's
  primitive cache, process-wide and shared by every model the process trains) is
  reported apart and not charged to the device (``device_peak``).
- :func:`measure_round`: a whole round of the fixed-model loop (``train_epochs``), its
  peak above the heap before it plus the parameters alive then.
- :func:`measure_client_round`: a fleet node's whole client call, from before it
  builds its model, phase by phase.

Steps, DynHP runs and rounds add what deleting the model, optimizer, generator (and
DynHP) gives back beyond their tensors' data: objects alive before the measured
phase, which the memory model counts (``memory.object_bytes``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).with_name("heapcount.c")


class HeapCounterUnavailable(RuntimeError):
    """The heap counter cannot be built or loaded here (no C compiler, not Linux)."""


def library() -> Path:
    """The compiled counter (built once per source version)."""
    digest = hashlib.sha1(SOURCE.read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fogsim"
    lib = cache / f"libheapcount-{digest}.so"
    if lib.exists():
        return lib
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not sys.platform.startswith("linux"):
        raise HeapCounterUnavailable("measuring the heap needs Linux and a C compiler (cc)")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    built = subprocess.run(
        [cc, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(SOURCE), "-ldl"],
        capture_output=True,
        text=True,
    )
    if built.returncode:
        raise HeapCounterUnavailable(f"cannot build the heap counter: {built.stderr[-500:]}")
    os.replace(tmp, lib)
    return lib


def _run(request: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run ``fogsim.device.heap_worker.main(request)`` in a fresh Python under the counter."""
    env = {
        **os.environ,
        # the driver's own path: the same fogsim, and a user's factory module, as here
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "LD_PRELOAD": str(library()),
        "PYTHONMALLOC": "malloc",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        # a grid runs hundreds of shapes in one process: past oneDNN's 1,024 cached
        # primitives it evicts, freeing inside a step what a step at a new shape is
        # measured less of (what it leaves cached): read as that step's own, up to 70 KB
        "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "65536",
    }
    done = subprocess.run(
        [sys.executable, "-m", "fogsim.device.heap_worker", json.dumps(request)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode:
        raise RuntimeError(f"heap measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_steps(points: list[dict[str, Any]], jobs: int | None = None) -> list[dict[str, Any]]:
    """Measured bytes of one steady-state training step per point (dicts with
    ``channels``, ``hidden``, ``batch``, ``optimizer``; or a factory model's
    ``factory``, ``in_shape``, ``num_classes``, and optionally ``widths``, one per
    ``ChainLayout`` group: the dense model narrowed to the first ``w`` neurons of each
    group before training), in ``training_memory``'s
    terms (``measured``), with the step's own part (``transient``) and anonymous mmap
    growth outside malloc (``mmap_delta``, 0 when nothing bypasses the count); and of
    its first step at the point's batch after steps at another (``measured_new_shape``:
    a narrow CNN's is ~13 KB above its steady steps, where the process has not yet run
    the shape; oneDNN keeps one primitive cache per process, so a shape an earlier point
    ran measures as a steady step); ``peak``, the higher of the two, is the figure the
    memory model must bound.

    The points are dealt round-robin to ``jobs`` heap-counted processes run at once
    (default: one per CPU, at most 4): each counts only its own heap, and each point
    is measured after warm-up steps of its own, so the split does not move a figure
    beyond the run-to-run spread; it halves a grid's wall time on two cores."""
    jobs = max(1, min(jobs or os.cpu_count() or 1, 4, len(points)))
    shares = [points[i::jobs] for i in range(jobs)]
    with ThreadPoolExecutor(jobs) as pool:
        done = list(pool.map(lambda share: _run({"task": "steps", "points": share}), shares))
    results: list[dict[str, Any]] = [{}] * len(points)
    for i, share in enumerate(done):
        results[i::jobs] = share["results"]
    return results


def measure_dynhp(
    channels: tuple[int, ...],
    hidden: tuple[int, ...],
    budget: int,
    epochs: int = 3,
    samples: int = 2000,
    optimizer: str = "sgd-momentum",
    factory: str | None = None,
    criterion: str = "taylor",
) -> dict[str, Any]:
    """Phases of a real ``train_dynhp`` run on the first ``samples`` MNIST images under
    ``budget``, set up as ``fogsim dynhp`` does: ``{"phases": [{"kind": "step" |
    "check" | "fit", "device_peak", "peak", "kept", "modelled"?...}], "error"}``. The
    model is the FogNet of ``channels`` and ``hidden``, or ``factory``'s (a
    ``[model] factory`` reference; then both are ignored); DynHP scores neurons by
    ``criterion``."""
    request = {
        "task": "dynhp",
        "factory": factory,
        "channels": list(channels),
        "hidden": list(hidden),
        "budget": budget,
        "epochs": epochs,
        "samples": samples,
        "optimizer": optimizer,
        "criterion": criterion,
    }
    return _run(request)


def measure_round(
    channels: tuple[int, ...],
    hidden: tuple[int, ...],
    batch: int,
    samples: int,
    optimizer: str = "sgd-momentum",
    proximal_mu: float = 0.0,
) -> dict[str, Any]:
    """Measured bytes of a whole round of the fixed-model loop (``train_epochs``, as a
    HeteroFL, FedRolex, fedavg-feasible or Flower plug-in client trains): one epoch
    over ``samples`` random images at ``batch`` with a fresh optimizer, after one such
    round has settled the library caches; the peak above the heap before it plus the
    parameters alive then (``measured``), in ``training_memory``'s terms plus
    FedProx's copy of the model when ``proximal_mu`` is set, plus what the budget
    leaves out: the shuffled sample order (``order``) and what the round left in
    Python's free lists (``cached``: the loop empties them before each step, so this
    is one step's worth, an upper bound of their part of the peak)."""
    request = {
        "task": "round",
        "channels": list(channels),
        "hidden": list(hidden),
        "batch": batch,
        "samples": samples,
        "optimizer": optimizer,
        "proximal_mu": proximal_mu,
    }
    return _run(request)


def measure_client_round(
    scenario: str, overrides: list[str], node: int | None = None, repeats: int = 3, rounds: int = 1
) -> dict[str, Any]:
    """Bytes of fleet node ``node``'s (default: the smallest budget's) whole
    ``clients.fog_client.train`` call on what ``scenario``'s strategy sends it in round
    ``rounds`` (after its replies to the rounds before), above the heap before the
    call, by phase: the peak while it loads its data and
    model (``load``), what is alive as training starts (``entry``), the peak while it
    trains (``train``) and while it builds its reply (``reply``); with the node's data
    bytes (``data``), sample order (``order``), what the call left allocated once its
    reply was gone (``left``: the interpreter's caches, ``free_lists`` of it), its
    ``budget`` and the peak it reported (``modelled``); ``{"refused": metrics}`` if the
    node refused to train (its budget holds no model it is sent)."""
    request = {"task": "client", "scenario": scenario, "overrides": overrides, "node": node}
    return _run({**request, "repeats": repeats, "rounds": rounds})


def calibrate() -> dict[str, int]:
    """Check the method on a known allocation: ``allocated`` should be 3 MiB (plus the
    tensor's small bookkeeping) and ``after_free`` about 0."""
    return _run({"task": "calibrate"})
