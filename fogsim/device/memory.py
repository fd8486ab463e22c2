"""How many bytes training a FogNet takes: the memory model.

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
Against ``fogsim.device.measure.measure_training_memory`` (live tensor bytes) the model
is within 0.1% for MLPs, CNNs and pruned widths at batch 1..256 with SGD, momentum
and Adam (the remainder is the scalar loss and Adam's step counters).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fogsim.device.models import IMAGE_SHAPE, NUM_CLASSES, FogNet
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
        step = _StepReplay(self, optimizer, dtype_bytes)
        step.forward()
        step.loss()
        step.backward_head()
        step.backward_convs()
        step.optimizer_step()
        return step.phases


class _StepReplay:
    """The live bytes of one training step, replayed in allocation order.

    ``fixed`` counts batch-independent bytes (parameters, optimizer state, gradients as
    they appear), ``per_sample`` the bytes per sample of the batch (input, activations,
    their gradients); :meth:`mark` records a moment where the total may peak.
    """

    def __init__(self, arch: Arch, optimizer: str, dtype_bytes: int) -> None:
        self.arch, self.optimizer, self.d = arch, optimizer, dtype_bytes
        self.sizes = [math.prod(s) for s in arch.param_shapes()]
        self.fixed = sum(self.sizes) * self.d * (1 + OPTIMIZER_STATE[optimizer])
        self.per_sample = math.prod(arch.in_shape) * self.d + LABEL_BYTES  # the batch
        self.phases: list[tuple[int, int]] = []
        self.param = len(self.sizes) - 1  # the next bias whose gradient backward makes
        _, h, w = arch.in_shape
        self.blocks = []  # per conv block: (pre-pool map, pooled map) elements per sample
        for c in arch.channels:
            self.blocks.append((c * h * w, c * (h // 2) * (w // 2)))
            h, w = h // 2, w // 2
        first = arch.channels[-1] * h * w if arch.channels else math.prod(arch.in_shape)
        self.fc_in = [first, *arch.hidden]  # input width of each linear layer

    def mark(self) -> None:
        self.phases.append((self.fixed, self.per_sample))

    def grads_of_next_layer(self) -> None:
        """Backward allocates one layer's weight and bias gradients."""
        self.fixed += (self.sizes[self.param - 1] + self.sizes[self.param]) * self.d
        self.param -= 2

    def forward(self) -> None:
        """Per block the pre-activation and ReLU output coexist, then the pre-activation
        dies; the pooled output and its int64 max-pool indices are saved. Each hidden
        linear layer likewise keeps its ReLU output."""
        d = self.d
        for a, q in self.blocks:
            self.per_sample += 2 * a * d
            self.mark()
            self.per_sample += -a * d + q * d + q * 8
            self.mark()
        for u in self.arch.hidden:
            self.per_sample += 2 * u * d
            self.mark()
            self.per_sample -= u * d

    def loss(self) -> None:
        """Logits and log-softmax, then the backward of the loss: nll and log-softmax
        gradients."""
        k, d = self.arch.num_classes, self.d
        self.per_sample += 2 * k * d
        self.mark()
        self.per_sample -= k * d
        self.per_sample += 2 * k * d
        self.mark()
        self.per_sample -= k * d

    def backward_head(self) -> None:
        """The linear layers, last first: input gradient (unless it is the image),
        weight gradients, then the ReLU backward of the layer before."""
        d, k = self.d, self.arch.num_classes
        n_conv = len(self.arch.channels)
        outs = [*self.arch.hidden, k]
        for j in reversed(range(len(outs))):
            if j > 0 or n_conv > 0:
                self.per_sample += self.fc_in[j] * d
            self.grads_of_next_layer()
            self.mark()
            self.per_sample -= outs[j] * d  # incoming gradient
            if j == len(outs) - 1:
                self.per_sample -= k * d  # saved log-softmax
            if j > 0:  # ReLU backward of the previous hidden layer
                self.per_sample += self.fc_in[j] * d
                self.mark()
                self.per_sample -= 2 * self.fc_in[j] * d  # its output grad, saved output
            elif n_conv:
                self.per_sample -= self.fc_in[0] * d  # saved pooled input of layer 0

    def backward_convs(self) -> None:
        """Conv blocks, last first: max-pool backward, ReLU backward, conv backward
        (input gradient unless it is the image, weight gradients)."""
        d = self.d
        for i in reversed(range(len(self.blocks))):
            a, q = self.blocks[i]
            self.per_sample += a * d  # max-pool backward: grad of the ReLU output
            self.mark()
            self.per_sample -= q * d + q * 8  # pooled grad, indices
            self.per_sample += a * d  # ReLU backward
            self.mark()
            self.per_sample -= 2 * a * d  # ReLU output grad and saved ReLU output
            if i > 0:
                self.per_sample += self.blocks[i - 1][1] * d  # conv input grad
            self.grads_of_next_layer()
            self.mark()
            self.per_sample -= a * d  # conv output grad
            if i > 0:
                self.per_sample -= self.blocks[i - 1][1] * d  # saved conv input

    def optimizer_step(self) -> None:
        self.fixed += OPTIMIZER_WORKSPACE[self.optimizer] * max(self.sizes) * self.d
        self.mark()


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
def widest_fraction(arch: Arch, budget: int, optimizer: str, batch: int) -> float:
    """Largest width fraction f (every group ``ceil(f * width)`` neurons, see
    :meth:`Arch.scaled`) that trains at ``batch`` within ``budget``; 0.0 if not even
    width 1 fits.

    A 20-step bisection (~0.1 ms): strategies ask per sampled node, never per fleet
    node up front (log-uniform budgets make every node's budget distinct), and the
    cache makes a node's next participation free."""
    return largest_fraction(lambda f: training_memory(arch.scaled(f), batch, optimizer) <= budget)
