"""How many bytes training a FogNet takes, modelled cheaply and measured honestly.

The *model* (:func:`training_memory`) is pure arithmetic on the widths, because the
simulator evaluates it per client per round and DynHP re-evaluates it after every
pruning event to resize the batch. It counts, in float32 unless ``dtype_bytes`` says
otherwise:

- parameters, their gradients, and optimizer state (SGD 0x, momentum 1x, Adam 2x);
- an optimizer *workspace*: the single-tensor Adam step builds ``denom`` from two
  temporaries the size of the parameter it is updating, so 2x the largest tensor;
- the input batch (images + int64 labels) and the activations: rather than adding
  "saved activations x batch" (which over-counts by up to 70% for the CNN: most
  activations are freed before the last gradients exist), :meth:`Arch.phases`
  replays what autograd allocates and frees layer by layer (pre-activation and
  ReLU output, pooled output and int64 max-pool indices, the gradient maps of the
  backward pass, weight gradients appearing layer by layer) and the peak is the
  largest live total over those moments.

At every moment memory is affine in the batch size (``fixed + per_sample * batch``),
so the largest batch under a budget is a min of divisions (:func:`max_batch_size`).
Against :func:`measure_training_memory` the model is within 0.1% for MLPs, CNNs and
pruned widths at batch 1..256 with SGD, momentum and Adam (the remainder is the
scalar loss and Adam's step counters).

The *measurement* (:func:`measure_training_memory`) runs one real
zero_grad/forward/backward/step under a :class:`TorchDispatchMode` that sees every
ATen op (autograd's backward ops included, since CPU backward runs on the calling
thread). After each op it registers the storages of its outputs with
``StorageWeakRef`` (a weak reference to the C++ ``StorageImpl``, so it notices the
exact moment autograd frees a buffer, whatever Python objects come and go) and sums
the bytes of the storages still alive. The peak of that sum, plus the tensors that
already existed (parameters, optimizer state, the batch), is the measured peak of
live tensor bytes. It does not see scratch memory that a kernel allocates and frees
inside a single op (e.g. oneDNN workspaces), nor allocator fragmentation: it measures
tensors, which is what the model models. We tried ``torch.profiler`` memory events
first; on CPU they miss blocks allocated before profiling started and are coarse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fogsim.models import IMAGE_SHAPE, NUM_CLASSES, FogNet
from fogsim.units import format_bytes

OPTIMIZER_STATE = {"sgd": 0, "sgd-momentum": 1, "adam": 2}
OPTIMIZER_WORKSPACE = {"sgd": 0, "sgd-momentum": 0, "adam": 2}
LABEL_BYTES = 8  # int64 labels


class BudgetError(ValueError):
    """The memory budget cannot hold even one training sample of the model."""


@dataclass(frozen=True)
class MemoryBreakdown:
    """Modelled training bytes by kind.

    ``total`` is the simulated peak of live bytes, which is at most the sum of the
    parts: not everything is alive at once (e.g. most activations are freed by the
    time the last gradient is allocated). ``activations`` is the batch-dependent
    part at the peak, net of the input batch.
    """

    params: int
    grads: int
    optimizer_state: int
    workspace: int
    inputs: int
    activations: int
    total: int


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


@dataclass(frozen=True)
class Arch:
    """The shape facts the memory model needs; cheaper to pass around than a model."""

    channels: tuple[int, ...]
    hidden: tuple[int, ...]
    in_shape: tuple[int, int, int] = IMAGE_SHAPE
    num_classes: int = NUM_CLASSES

    @classmethod
    def of(cls, model: FogNet | Arch) -> Arch:
        if isinstance(model, Arch):
            return model
        return cls(tuple(model.channels), tuple(model.hidden), model.in_shape, model.num_classes)

    @property
    def widths(self) -> list[int]:
        """Every prunable neuron group's width, conv channels first (as FogNet)."""
        return [*self.channels, *self.hidden]

    def with_widths(self, widths: list[int] | tuple[int, ...]) -> Arch:
        n = len(self.channels)
        return Arch(tuple(widths[:n]), tuple(widths[n:]), self.in_shape, self.num_classes)

    def scaled(self, fraction: float) -> Arch:
        """Every group cut to ``ceil(fraction * width)`` neurons (at least 1)."""
        return self.with_widths([max(1, math.ceil(fraction * w)) for w in self.widths])

    def param_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of every parameter, in ``model.parameters()`` order."""
        c_in, h, w = self.in_shape
        shapes: list[tuple[int, ...]] = []
        for c in self.channels:
            shapes += [(c, c_in, 5, 5), (c,)]
            c_in, h, w = c, h // 2, w // 2
        sizes = [c_in * h * w, *self.hidden, self.num_classes]
        for a, b in zip(sizes, sizes[1:], strict=False):
            shapes += [(b, a), (b,)]
        return shapes

    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes())

    def phases(self, optimizer: str = "sgd", dtype_bytes: int = 4) -> list[tuple[int, int]]:
        """``(fixed_bytes, bytes_per_sample)`` of live tensors at each candidate peak.

        Replays, layer by layer, what autograd allocates and frees during
        forward, backward and the optimizer step of a FogNet (see module doc), so
        the peak at batch ``b`` is ``max(f + s * b for f, s in phases)``.
        """
        d, lab = dtype_bytes, LABEL_BYTES
        shapes = self.param_shapes()
        sizes = [math.prod(s) for s in shapes]
        n = sum(sizes)
        fixed = n * d * (1 + OPTIMIZER_STATE[optimizer])  # params + optimizer state
        s = math.prod(self.in_shape) * d + lab  # the input batch
        out: list[tuple[int, int]] = []

        def mark() -> None:
            out.append((fixed, s))

        # forward: per block the pre-activation and ReLU output coexist, then the
        # pre-activation dies; pooled output and int64 indices are saved.
        _, h, w = self.in_shape
        blocks = []
        for c in self.channels:
            a, q = c * h * w, c * (h // 2) * (w // 2)
            blocks.append((a, q))
            s += 2 * a * d
            mark()
            s += -a * d + q * d + q * 8
            mark()
            h, w = h // 2, w // 2
        fc_in = [self.channels[-1] * h * w if self.channels else math.prod(self.in_shape)]
        fc_in += list(self.hidden)
        for u in self.hidden:
            s += 2 * u * d
            mark()
            s -= u * d
        k = self.num_classes
        s += 2 * k * d  # logits + log-softmax
        mark()
        s -= k * d
        # backward of the loss: nll grad + log-softmax grad
        s += 2 * k * d
        mark()
        s -= k * d
        n_conv = len(self.channels)
        p = len(sizes) - 1  # index of the current layer's bias in ``sizes``
        outs = [*self.hidden, k]
        for j in reversed(range(len(outs))):
            needs_input_grad = j > 0 or n_conv > 0
            if needs_input_grad:
                s += fc_in[j] * d
            fixed += (sizes[p - 1] + sizes[p]) * d  # weight and bias grads
            mark()
            p -= 2
            s -= outs[j] * d  # incoming gradient
            if j == len(outs) - 1:
                s -= k * d  # saved log-softmax
            if j > 0:  # ReLU backward of the previous hidden layer
                s += fc_in[j] * d
                mark()
                s -= 2 * fc_in[j] * d  # its output grad and saved ReLU output
            elif n_conv:
                s -= fc_in[0] * d  # saved pooled input of the first linear
        for i in reversed(range(n_conv)):
            a, q = blocks[i]
            s += a * d  # max-pool backward: grad of the ReLU output
            mark()
            s -= q * d + q * 8  # pooled grad, indices
            s += a * d  # ReLU backward
            mark()
            s -= 2 * a * d  # ReLU output grad and saved ReLU output
            if i > 0:
                s += blocks[i - 1][1] * d  # conv input grad
            fixed += (sizes[p - 1] + sizes[p]) * d
            mark()
            p -= 2
            s -= a * d  # conv output grad
            if i > 0:
                s -= blocks[i - 1][1] * d  # saved conv input (previous pooled output)
        fixed += OPTIMIZER_WORKSPACE[optimizer] * max(sizes) * d  # optimizer step
        mark()
        return out


def memory_breakdown(
    model: FogNet | Arch,
    batch_size: int,
    optimizer: str | torch.optim.Optimizer = "sgd",
    dtype_bytes: int = 4,
) -> MemoryBreakdown:
    """Modelled bytes of one training step of ``model`` at ``batch_size``."""
    arch = Arch.of(model)
    kind = optimizer_kind(optimizer)
    sizes = [math.prod(s) for s in arch.param_shapes()]
    n = sum(sizes)
    fixed, per = max(arch.phases(kind, dtype_bytes), key=lambda fs: fs[0] + fs[1] * batch_size)
    inputs = (math.prod(arch.in_shape) * dtype_bytes + LABEL_BYTES) * batch_size
    return MemoryBreakdown(
        params=n * dtype_bytes,
        grads=n * dtype_bytes,
        optimizer_state=OPTIMIZER_STATE[kind] * n * dtype_bytes,
        workspace=OPTIMIZER_WORKSPACE[kind] * max(sizes) * dtype_bytes,
        inputs=inputs,
        activations=per * batch_size - inputs,
        total=fixed + per * batch_size,
    )


def training_memory(
    model: FogNet | Arch,
    batch_size: int,
    optimizer: str | torch.optim.Optimizer = "sgd",
    dtype_bytes: int = 4,
) -> int:
    """Modelled peak bytes of training ``model`` at ``batch_size`` (see module doc)."""
    arch = Arch.of(model)
    phases = arch.phases(optimizer_kind(optimizer), dtype_bytes)
    return max(f + s * batch_size for f, s in phases)


def max_batch_size(
    model: FogNet | Arch,
    budget_bytes: int,
    optimizer: str | torch.optim.Optimizer = "sgd",
    cap: int | None = None,
    dtype_bytes: int = 4,
) -> int:
    """Largest batch whose modelled memory fits ``budget_bytes`` (at most ``cap``).

    Raises :class:`BudgetError` when even batch 1 does not fit.
    """
    arch = Arch.of(model)
    phases = arch.phases(optimizer_kind(optimizer), dtype_bytes)
    one = max(f + s for f, s in phases)
    if one > budget_bytes:
        raise BudgetError(
            f"memory budget {format_bytes(budget_bytes)} ({budget_bytes} B) cannot hold a "
            f"training step of widths {[*arch.channels, *arch.hidden]}: batch 1 needs "
            f"{format_bytes(one)} ({one} B)"
        )
    batch = min((budget_bytes - f) // s for f, s in phases if s > 0)
    return int(min(batch, cap) if cap is not None else batch)


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the peak of live storage bytes over the ops run under it."""

    def __init__(self, existing: list[torch.Tensor]) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        for t in existing:
            self._track(t)
        self.baseline = self._sum()
        self.peak = self.baseline

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr() if storage.nbytes() else id(storage)
        entry = self.live.get(key)
        if entry is None or entry[0].expired():
            self.live[key] = (StorageWeakRef(storage), storage.nbytes())

    def _sum(self) -> int:
        dead = [k for k, (ref, _) in self.live.items() if ref.expired()]
        for k in dead:
            del self.live[k]
        return sum(n for _, n in self.live.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        self.peak = max(self.peak, self._sum())
        return out


def measure_training_memory(
    model: nn.Module,
    batch_size: int,
    optimizer: str | torch.optim.Optimizer = "sgd",
    lr: float = 0.01,
    seed: int = 0,
) -> int:
    """Measured peak live tensor bytes of one real training step (see module doc).

    The model is trained on a copy, so the caller's model and optimizer are untouched.
    One warm-up step first creates the optimizer state, as in steady-state training;
    gradients are then set to ``None`` so they count as allocated inside the step.
    """
    import copy

    work = copy.deepcopy(model)
    work.train()
    kind = optimizer_kind(optimizer)
    params = list(work.parameters())
    if kind == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9 if kind == "sgd-momentum" else 0.0)
    gen = torch.Generator().manual_seed(seed)
    in_shape = getattr(work, "in_shape", IMAGE_SHAPE)
    classes = getattr(work, "num_classes", NUM_CLASSES)
    x = torch.randn(batch_size, *in_shape, generator=gen)
    y = torch.randint(0, classes, (batch_size,), generator=gen)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(work(x), y).backward()
        opt.step()

    step()
    opt.zero_grad(set_to_none=True)
    existing = [*params, x, y]
    existing += [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    with _LiveTensorBytes(existing) as mode:
        step()
    return mode.peak
