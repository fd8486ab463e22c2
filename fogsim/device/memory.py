"""How many bytes training a FogNet takes: the memory model (a ``[model] factory``
model's is the same replay on its own layers, ``fogsim.device.chain_replay``).

The *model* (:func:`training_memory`) is pure arithmetic on the widths, because the
simulator evaluates it per client per round and DynHP re-evaluates it after every
pruning event to resize the batch. It counts, in float32 unless ``dtype_bytes`` says
otherwise:

- parameters, their gradients, and optimizer state (SGD 0x, momentum 1x, Adam 2x);
- an optimizer *workspace*: the single-tensor Adam step builds ``denom`` from two
  temporaries the size of the parameter it is updating, so 2x the largest tensor;
- the input batch (images + int64 labels) and the activations: rather than adding
  "saved activations x batch" (which over-counts by up to 70% for the CNN: most
  activations are freed before the last gradients exist), ``replay.step_phases``
  replays what autograd allocates and frees layer by layer (pre-activation and
  ReLU output, pooled output and int64 max-pool indices, the gradient maps of the
  backward pass, weight gradients appearing layer by layer) and the peak is the
  largest live total over those moments;
- convolutions as oneDNN really runs them (see "Convolutions");
- per-step bookkeeping that is not tensor data (see "Bookkeeping");
- the objects training holds all round besides tensor data: the model's modules and
  parameters, the optimizer and its state records, the round's random generator
  (:func:`object_bytes`).

At every moment memory is affine in the batch size (``fixed + per_sample * batch``),
so the largest batch under a budget is a min of divisions (:func:`max_batch_size`).
Convolutions. PyTorch runs CPU float32 convolutions with oneDNN (``torch.backends.
mkldnn``, on by default; the model assumes it stays on: off, PyTorch uses NNPACK with a
persistent, cache-dependent workspace for batch >= 16 and a whole-batch im2col buffer
below, and is 1.2-1.8x slower for CNNs of 4+ channels here). oneDNN computes in
channel-blocked layouts (``nChw8c`` with AVX2, ``nChw16c`` with AVX-512) whose channel
count is padded up to the block (:func:`conv_block`), and reorders between them and
PyTorch's plain NCHW tensors inside each op; per conv (``c_in -> c`` channels, ``hw``
pixels, ``pad`` = rounded up to the block):

- forward: an input with ``c_in >= block`` is first reordered (``pad(c_in) * hw``,
  and the weights); the result is written blocked (``pad(c) * hw``) and reordered
  into the plain output (``c * hw``); the blocked copies die with the op;
- backward data (not for the first conv): blocked output grad (``pad(c) * hw``) and
  weights -> blocked input grad (``pad(c_in) * hw``) -> plain input grad;
- backward weights: blocked output grad again plus the input reordered to blocked
  (``pad(c_in) * hw``, also for the 1-channel image: 8x its size) -> a blocked
  weight grad (``pad(c) * pad(c_in) * 25``) -> the plain weight grad.

For narrow convs these copies dominate: with 1-channel convs a step takes 4.5x what
the plain tensors do (a tensor-only model was 1.5-4.5x under the heap for 1..8
channels).

Bookkeeping. A step also allocates what is not tensor data: autograd nodes and
saved-variable records, TensorImpl/StorageImpl and Python objects of every
intermediate, malloc headers, and for convs oneDNN's per-call primitive and memory
descriptors: ~12.5 KB + ~3.3 KB per layer (:data:`STEP_OVERHEAD` uses 13.5 KB, for
run-to-run spread; at the optimizer's step, after the graph is freed, half the
per-layer part: ``replay.GRAPH_RECORDS_LEFT``), plus ~30 KB while a graph with
convolutions lives, up to 34.4 KB on a step that builds oneDNN's primitives for a new
shape (:data:`ONEDNN_GRAPH_OVERHEAD` charges 35.5 KB on every such step: which steps are
at a new shape depends on what the process ran before, and a device's process is not
the simulator's).

The model is checked against the process heap itself (``fogsim.device.heap``: an
LD_PRELOAD malloc counter; the peak of live heap bytes during a step above the bytes
alive before it (the batch indexed inline, as the loops do), plus the parameters and
optimizer state that were alive, and what deleting the model, the optimizer and a
generator gives back beyond their tensors' data), at each point the higher of its
first step at a new shape (less what that step leaves in the process's caches) and a
steady step after it: within [1.00, 1.13] x measured for MLPs and CNNs of 1..64
channels, batch 1..512, SGD, momentum and Adam, dense and pruned widths (AVX2, torch
2.13; ``tests/device/test_memory.py``). A narrow CNN's first step at a new shape is
~13 KB above its steady steps, and the model 0.6-22 KB above it: a steady step of the
tiniest CNNs (a one-conv CNN on 8x8 images at batch 1, 77 KB) is up to 1.18x below it
(1.16 with Adam where the grid ran its shape before: not a new shape then).
Not in it, and not in the model: library caches that
persist *between* steps, shared by every model a process trains (MKL's GEMM buffer
pool, 0.3-2.1 MB, and oneDNN's primitive cache, ~5-14 KB per primitive and shape):
they grow on a process's first step and its first step at a new shape. Known to
over-count (safe side): a first conv taking 3 channels and giving fewer than 8 (or
9-11), whose input oneDNN's backward-weights kernel does not reorder to the blocked
copy charged here (up to 1.66x the heap; the README, "Known limit").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fogsim import MMAP_THRESHOLD
from fogsim.device.arch import Arch
from fogsim.device.factory import FactoryArch
from fogsim.device.models import FogNet
from fogsim.device.replay import (
    GRAPH_RECORDS_LEFT,
    LABEL_BYTES,
    ONEDNN_GRAPH_OVERHEAD,
    OPTIMIZER_STATE,
    OPTIMIZER_WORKSPACE,
    step_overhead,
    step_phases,
)
from fogsim.units import format_bytes

# The memory model's revision, recorded in every benchmark's results file so that a
# result measured under an earlier one says so where the README shows it
# (``benchmarks/results_io.py``): what each revision changed for the devices.
MODEL_REVISION = 7
REVISIONS = {
    1: "the step alone",
    2: (
        "the objects a round holds besides tensor data (the model's modules and "
        "parameters, the optimizer, the generator: 21-37 KB) and DynHP's arrays counted, "
        "so the smallest devices train slightly smaller models or batches"
    ),
    3: (
        "DynHP's arrays sized to the neurons a device holds, not the global model's "
        "(3 KB instead of 13 KB on a small MNIST device), so mask-union's small devices "
        "train slightly wider models than under revision 2"
    ),
    4: (
        "a first convolution on 3-channel (RGB) images no longer charged a blocked copy "
        "of the image, which oneDNN does not make (it was up to 1.66x the heap); models "
        "on 1-channel images, every data set fogsim ships, unchanged"
    ),
    5: (
        "a CNN step charged 3 KB more, for the moment oneDNN builds its primitives on a "
        "step at a new shape (after a pruning, at a new batch: up to 2.0 KB above "
        "revision 4's charge by the heap); 28 runs of the research tables' CNNs re-run "
        "gave their figures to the last digit; LeNet-5's cameras (whose budget held their "
        "width with 376 B to spare) lost one neuron, and so did a 1 MiB CNN camera's "
        "model at batch 8"
    ),
    6: (
        "a CNN step charged 1.5 KB more (a narrow CNN trained with plain SGD, packed to "
        "its budget, went 0.03-0.34 KB over it by the heap on a step at a new shape), "
        "and Adam's step no longer charged the batch, whose copy dies with the graph "
        "(Adam at batch 256 was modelled 1.2-1.3x the heap); the widths and batches of "
        "fogsim's CNN scenarios unchanged but LeNet-5's cameras', which lost one neuron"
    ),
    7: (
        "Adam's step charged half the graph's per-layer bookkeeping, freed with the graph "
        "(Adam on MLPs of a few neurons was 1.17x the heap): Adam's figures 0.2-8 KB lower, "
        "a factory model with GELU up to 8 KB higher (GELU's first call at a shape), no "
        "other; no benchmark or scenario of fogsim's trains with Adam or GELU"
    ),
}
# The last revision that moved a figure of fogsim's own benchmarks (every one trains on
# 1-channel images): a table measured under it or later is current. Revision 5 moved
# the LeNet-5 table (re-run under it), none of 28 re-run research CNN runs (seeds 1-3
# of mask-union and HeteroFL, seed 1 of FedRolex, on the four CNN scenarios), but the
# research rows sized at batch 8 (a camera's batch-8 model one neuron narrower: those
# 20 CNN rows re-run under revision 6); revision 6 the LeNet-5 table (re-run) and no CNN
# scenario's widths or batches at batch 4, 8 or 16; revision 7 none (only Adam's and
# GELU's figures moved). Which rows a revision moved is tracked here and in the README,
# not by this number.
BENCHMARKS_REVISION = 3


class BudgetError(ValueError):
    """The memory budget cannot hold even one training sample of the model."""


@dataclass(frozen=True)
class MemoryBreakdown:
    """Modelled training bytes by kind.

    ``total`` is the simulated peak of live bytes, which is at most the sum of the
    parts: not everything is alive at once (e.g. most activations are freed by the
    time the last gradient is allocated). ``activations`` is the batch-dependent
    part at the peak, net of the input batch (oneDNN's blocked copies included);
    ``overhead`` is the per-step bookkeeping at the peak (module doc), ``objects``
    the objects held all round (:func:`object_bytes`).
    """

    params: int
    grads: int
    optimizer_state: int
    workspace: int
    inputs: int
    activations: int
    total: int
    overhead: int = 0
    objects: int = 0


def optimizer_kind(optimizer: str | torch.optim.Optimizer) -> str:
    """Normalise an optimizer name or instance to one of :data:`OPTIMIZER_STATE`."""
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZER_STATE:
            raise ValueError(
                f"unknown optimizer {optimizer!r}; allowed: {', '.join(OPTIMIZER_STATE)}"
            )
        return optimizer
    if isinstance(optimizer, torch.optim.Adam):
        return "adam"
    if isinstance(optimizer, torch.optim.SGD):
        return "sgd-momentum" if optimizer.defaults.get("momentum", 0) else "sgd"
    raise ValueError(f"no memory model for optimizer {type(optimizer).__name__}")


def memory_breakdown(
    model: FogNet | Arch,
    batch_size: int,
    optimizer: str | torch.optim.Optimizer = "sgd",
    dtype_bytes: int = 4,
) -> MemoryBreakdown:
    """Modelled bytes of one training step of ``model`` at ``batch_size`` (fogsim's own
    models: a factory model's replay, ``fogsim.device.chain_replay``, gives its total
    without a breakdown)."""
    arch = Arch.of(model)
    kind = optimizer_kind(optimizer)
    sizes = [math.prod(s) for s in arch.param_shapes()]
    n = sum(sizes)
    phases = step_phases(arch, kind, dtype_bytes)
    peak = max(range(len(phases)), key=lambda i: phases[i][0] + phases[i][1] * batch_size)
    fixed, per = phases[peak]
    graph_lives = peak < len(phases) - 1  # else the optimizer step's (replay module)
    overhead = step_overhead(arch, 1.0 if graph_lives else GRAPH_RECORDS_LEFT)
    if arch.channels and graph_lives:  # with its oneDNN objects
        overhead += ONEDNN_GRAPH_OVERHEAD
    inputs = (math.prod(arch.in_shape) * dtype_bytes + LABEL_BYTES) * batch_size
    slack = mmap_slack(arch, phases, batch_size, kind, dtype_bytes)
    objects = object_bytes(arch, kind)
    return MemoryBreakdown(
        params=n * dtype_bytes,
        grads=n * dtype_bytes,
        optimizer_state=OPTIMIZER_STATE[kind] * n * dtype_bytes,
        workspace=OPTIMIZER_WORKSPACE[kind] * max(sizes) * dtype_bytes,
        inputs=inputs,
        activations=per * batch_size - inputs,
        total=fixed + per * batch_size + slack + objects,
        overhead=overhead + slack,
        objects=objects,
    )


def step_phases_of(
    model: FogNet | Arch | FactoryArch,
    optimizer: str,
    dtype_bytes: int = 4,
    batch: int | None = None,
) -> list[tuple[int, int]]:
    """``(fixed, per_sample)`` bytes at every moment a step may peak: replayed for a
    FogNet (``fogsim.device.replay``), or on a factory model's own layers, at ``batch``
    or bounding every batch (a factory conv's algorithm depends on the batch), with the
    objects held all round (:func:`object_bytes`) in every moment's fixed part."""
    if isinstance(model, FactoryArch):
        phases = model.phases(optimizer, dtype_bytes, batch)
    else:
        model = Arch.of(model)
        phases = step_phases(model, optimizer, dtype_bytes)
    objects = object_bytes(model, optimizer)
    return [(fixed + objects, per) for fixed, per in phases]


# What training holds all round besides tensor data and a step's own bookkeeping, by
# the heap (``fogsim.device.heap``: what deleting each gives back beyond its tensors'
# data): a module (an nn.Module and its dicts) 2.2-2.3 KB; a parameter or buffer (its
# Parameter, TensorImpl and storage objects) 0.7-1.0 KB; the optimizer 1.9-2.1 KB, and
# per parameter 0.70-0.73 KB of state records with momentum, 1.93-1.99 KB with Adam;
# the round's random generator 2.7-3.1 KB. Rounded up here: 21-37 KB for fogsim's MLPs
# and CNNs, which a step alone leaves out (the heap saw a whole 512 KiB sensor round
# at 1.05x its budget without them).
MODULE_OBJECT, TENSOR_OBJECT = 2688, 1024
OPTIMIZER_OBJECT = 2304
STATE_OBJECTS = {"sgd": 0, "sgd-momentum": 768, "adam": 2048}  # per parameter
GENERATOR_OBJECT = 3072


def object_bytes(model: Arch | FactoryArch, optimizer: str) -> int:
    """Bytes of the objects a round of training ``model`` with ``optimizer`` holds
    besides tensor data: its modules, parameters and buffers, the optimizer and its
    per-parameter state records, and the random generator that orders its batches."""
    modules, tensors = model.object_counts()
    params = len(model.param_shapes())
    return (
        MODULE_OBJECT * modules
        + TENSOR_OBJECT * tensors
        + OPTIMIZER_OBJECT
        + STATE_OBJECTS[optimizer] * params
        + GENERATOR_OBJECT
    )


def training_memory(
    model: FogNet | Arch | FactoryArch,
    batch_size: int,
    optimizer: str | torch.optim.Optimizer = "sgd",
    dtype_bytes: int = 4,
) -> int:
    """Modelled peak bytes of training ``model`` at ``batch_size`` (see module doc)."""
    kind = optimizer_kind(optimizer)
    phases = step_phases_of(model, kind, dtype_bytes, batch_size)
    peak = max(f + s * batch_size for f, s in phases)
    return peak + mmap_slack(model, phases, batch_size, kind, dtype_bytes)


# glibc serves a block of 32 MiB or more (its largest mmap threshold, where fogsim pins
# it: fogsim/__init__) with mmap: whole pages and a header, up to a page beyond the
# tensor's bytes (4,032 B by the heap for torch's 64-byte-aligned tensors), which the
# replay, counting bytes, does not see.
PAGE = 4096


def mmap_slack(
    model: FogNet | Arch | FactoryArch,
    phases: list[tuple[int, int]],
    batch_size: int,
    optimizer: str,
    dtype_bytes: int = 4,
) -> int:
    """A page per tensor of :data:`fogsim.MMAP_THRESHOLD` bytes or more: each such parameter's own
    copies (itself, its gradient, its optimizer state and Adam's workspace), and as many
    of the batch's tensors as its largest per-sample total holds 32 MiB pieces. Zero
    for every step under 32 MiB a tensor (a model's peak once fell 2.3-17 KB under the
    heap's with a 43 MB weight and Adam)."""
    copies = 2 + OPTIMIZER_STATE[optimizer] + OPTIMIZER_WORKSPACE[optimizer]
    shapes = Arch.of(model).param_shapes() if isinstance(model, FogNet) else model.param_shapes()
    large = sum(math.prod(s) * dtype_bytes >= MMAP_THRESHOLD for s in shapes)
    batch_pieces = max(s for _, s in phases) * batch_size // MMAP_THRESHOLD
    return PAGE * (large * copies + batch_pieces)


# What a tensor holds besides its data (TensorImpl, StorageImpl, the Python object,
# malloc headers, its place in a list): 470-480 B by the heap for a detached clone
TENSOR_METADATA = 512


def proximal_anchor_bytes(model: Arch | FactoryArch, dtype_bytes: int = 4) -> int:
    """FedProx's copy of the received model, alive through local training on top of
    every step (``fogsim.device.training.add_proximal_gradient``): one copy of the
    parameters, each a tensor of its own (:data:`TENSOR_METADATA`: ~3 KB for a
    three-layer MLP, which the round's heap check once found over the model)."""
    tensors = len(model.param_shapes())
    return model.num_params() * dtype_bytes + TENSOR_METADATA * tensors


def max_batch_size(
    model: FogNet | Arch | FactoryArch,
    budget_bytes: int,
    optimizer: str | torch.optim.Optimizer = "sgd",
    cap: int | None = None,
    dtype_bytes: int = 4,
) -> int:
    """Largest batch whose modelled memory fits ``budget_bytes`` (at most ``cap``).

    Raises :class:`BudgetError` when even batch 1 does not fit.
    """
    kind = optimizer_kind(optimizer)
    phases = step_phases_of(model, kind, dtype_bytes)
    one = max(f + s for f, s in phases) + mmap_slack(model, phases, 1, kind, dtype_bytes)
    if one > budget_bytes:
        what = model.ref if isinstance(model, FactoryArch) else "widths"
        raise BudgetError(
            f"memory budget {format_bytes(budget_bytes)} ({budget_bytes} B) cannot hold a "
            f"training step of {what} {list(model.widths)}: batch 1 needs "
            f"{format_bytes(one)} ({one} B)"
        )
    batch = min((budget_bytes - f) // s for f, s in phases if s > 0)
    batch = int(min(batch, cap) if cap is not None else batch)
    while batch > 1 and training_memory(model, batch, kind, dtype_bytes) > budget_bytes:
        batch -= 1  # the pages of 32 MiB tensors (mmap_slack): zero under 32 MiB
    return batch


# What DynHP itself holds on a device while its model trains, by the heap (what deleting
# it gives back): 1.3 KB, ~0.45 KB per neuron group (four arrays) and 25 B per neuron
# the device holds (score and kept index in 8 B each, streak 8 B, seen 1 B). Rounded up.
DYNHP_OBJECT, GROUP_OBJECTS, NEURON_BYTES = 2048, 512, 25


def dynhp_bytes(model: Arch | FactoryArch) -> int:
    """Bytes DynHP (``fogsim.device.dynhp``) holds on a device whose model has
    ``model``'s widths: its arrays cover the device's own neurons. A budget's training
    gets what is left after them (``dynhp_train.train_dynhp``); a strategy whose clients
    run DynHP sizes their models to that rest (:func:`widest_fraction`)."""
    widths = model.widths
    return DYNHP_OBJECT + GROUP_OBJECTS * len(widths) + NEURON_BYTES * sum(widths)


def largest_fraction(fits: Callable[[float], bool], steps: int = 20) -> float:
    """Largest width fraction ``f`` in [0, 1] with ``fits(f)``, for a ``fits`` that
    holds below some fraction and fails above it: 1.0 if the whole width fits, 0.0 if
    not even ``fits(0.0)``, else a ``steps``-step bisection (from below)."""
    if fits(1.0):
        return 1.0
    if not fits(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


@functools.lru_cache(maxsize=1 << 16)
def widest_fraction(
    arch: Arch | FactoryArch, budget: int, optimizer: str, batch: int, dynhp: bool = False
) -> float:
    """Largest width fraction f (every group ``ceil(f * width)`` neurons, see
    :meth:`Arch.scaled`) that trains at ``batch`` within ``budget``, beside DynHP's
    arrays if ``dynhp`` (:func:`dynhp_bytes`); 0.0 if not even width 1 fits.

    A 20-step bisection (~0.1 ms): strategies ask per sampled node, never per fleet
    node up front (log-uniform budgets make every node's budget distinct), and the
    cache makes a node's next participation free."""
    return largest_fraction(lambda f: need(arch.scaled(f), batch, optimizer, dynhp) <= budget)


def need(model: Arch | FactoryArch, batch: int, optimizer: str, dynhp: bool = False) -> int:
    """Bytes a device needs to train ``model`` at ``batch``: :func:`training_memory`,
    and DynHP's arrays beside it if it runs DynHP (:func:`dynhp_bytes`)."""
    return training_memory(model, batch, optimizer) + (dynhp_bytes(model) if dynhp else 0)
