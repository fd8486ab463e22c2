"""One training step of any chain model (``fogsim.device.chain``), replayed allocation
by allocation: ``fogsim.device.replay`` generalised from FogNet to the layers
``chain.check_model`` admits, at the model's current (possibly narrowed) widths.

Why a replay and not a measurement: a factory model's step is measured by the heap
counter only for the dense model (``fogsim.device.factory``), but pruning and the
sub-model strategies need its memory at any widths, many times per round. So the
model is traced once with ``torch.fx`` (op sequence and per-sample shapes, on a batch
of 1) and every op's allocations are replayed with the rules PyTorch follows on CPU,
each checked against the heap counter (``tests/device/test_chain_memory.py``):

- forward: every op allocates its output (a view, ``Flatten``/``Identity``, does
  not); max-pooling also its int64 indices; ``Dropout`` (CPU: ``input * noise``) a
  float noise tensor; convolutions their oneDNN blocked copies, as in ``replay``
  (channels padded to :data:`CONV_BLOCK`, strides and kernels of any size);
- autograd saves: Linear/Conv/BatchNorm/pooling/GELU/SiLU/LeakyReLU/ELU their input,
  ReLU/Sigmoid/Tanh their output, max-pooling its indices, Dropout its noise,
  ``AdaptiveAvgPool2d(1)`` (a ``mean``) nothing; an op before the first layer with
  parameters is not recorded (the image needs no gradient) and saves nothing;
- a tensor dies when neither the next op nor a saved slot holds it; backward runs
  the ops last first, each allocating its input's gradient (not for the first
  recorded op) and its parameters' gradients, then freeing its output's gradient and
  what it saved; convolutions' backward data and weights use blocked copies;
- at batch 1, a convolution with a kernel of at most 3x3 and an input of at most
  20480 elements runs PyTorch's own ``slow_conv2d`` (im2col) instead of oneDNN: its
  column buffers (``c_in * kh * kw`` per output pixel) replace the blocked copies.
  Those moments hold only at batch 1, so they are phases whose slope is
  :data:`BATCH_ONE_ONLY` (negative): at batch 1 they give the bytes, above it they
  are far below zero and never the peak (``max_batch_size`` ignores slopes <= 0);
- bookkeeping (``replay.STEP_OVERHEAD``...) per layer with parameters, and
  ``ONEDNN_GRAPH_OVERHEAD`` while a graph with convolutions lives.

The phases are pure in (model structure, widths, input shape, optimizer), so they
are cached on a key of the modules' types and hyperparameters and the arrays' shapes
(:func:`chain_phases`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from fogsim.device.replay import (
    CONV_BLOCK,
    LABEL_BYTES,
    ONEDNN_GRAPH_OVERHEAD,
    OPTIMIZER_STATE,
    OPTIMIZER_WORKSPACE,
    STEP_OVERHEAD,
    STEP_OVERHEAD_PER_LAYER,
)

Phases = list[tuple[int, int]]
INDEX_BYTES = 8  # int64 max-pool indices
BATCH_ONE_ONLY = -(1 << 40)  # the slope of a phase that holds at batch 1 only (module doc)
# ops that save their output for backward, their input, or nothing (a view)
SAVE_OUTPUT = (nn.ReLU, nn.Sigmoid, nn.Tanh)
SAVE_INPUT = (nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.AvgPool2d)
VIEWS = (nn.Flatten, nn.Identity)
FUNCTIONS: dict[Callable, str] = {
    torch.relu: "relu",
    nn.functional.relu: "relu",
    torch.sigmoid: "relu",
    torch.tanh: "relu",
    nn.functional.gelu: "act_in",
    nn.functional.silu: "act_in",
    nn.functional.max_pool2d: "maxpool",
    torch.flatten: "view",
}
METHODS = {"relu": "relu", "sigmoid": "relu", "tanh": "relu", "flatten": "view", "view": "view"}


@dataclass(frozen=True)
class Op:
    """One recorded op: its kind, per-sample input/output shapes, and for layers the
    module (``conv``/``linear``/``bn``)."""

    kind: str
    inp: tuple[int, ...]
    out: tuple[int, ...]
    module: nn.Module | None = field(default=None, compare=False)


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        return "bn"
    if isinstance(module, SAVE_OUTPUT):
        return "relu"
    if isinstance(module, SAVE_INPUT):
        return "act_in"
    if isinstance(module, nn.MaxPool2d | nn.AdaptiveMaxPool2d):
        return "maxpool"
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return "mean" if _pair(module.output_size) == (1, 1) else "act_in"
    if isinstance(module, nn.Dropout):
        return "dropout" if module.p > 0 else "view"
    if isinstance(module, VIEWS):
        return "view"
    raise ValueError(f"no memory rule for layer {type(module).__name__}")


def _pair(v: object) -> tuple:
    return tuple(v) if isinstance(v, tuple | list) else (v, v)


def trace(model: nn.Module, in_shape: tuple[int, int, int]) -> list[Op]:
    """The model's ops in forward order with per-sample shapes (``torch.fx`` on a
    batch of 1, without gradients, in eval mode so batch norm's running statistics
    are left alone; on the parameters' device, ``meta`` for a model without storage)."""
    graph = fx.symbolic_trace(model)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(graph).propagate(torch.zeros(1, *in_shape, device=device))
    finally:
        model.train(training)
    modules = dict(graph.named_modules())
    ops: list[Op] = []
    for node in graph.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if node.op in ("placeholder", "output") or not isinstance(meta, TensorMetadata):
            continue
        source = next(a for a in node.all_input_nodes if "tensor_meta" in a.meta)
        inp, out = tuple(source.meta["tensor_meta"].shape[1:]), tuple(meta.shape[1:])
        module = modules[node.target] if node.op == "call_module" else None
        if module is not None:
            kind = _kind(module)
        elif node.op == "call_function" and node.target in FUNCTIONS:
            kind = FUNCTIONS[node.target]
        elif node.op == "call_method" and node.target in METHODS:
            kind = METHODS[node.target]
        else:
            raise ValueError(f"no memory rule for {node.op} {node.target}")
        ops.append(Op(kind, inp, out, module))
    return ops


class _Live:
    """Live bytes of one step: ``fixed`` (parameters, optimizer state, gradients,
    bookkeeping) and ``per_sample`` (batch, activations, their gradients), tensors
    with reference counts (the flowing value and each saved slot hold one)."""

    def __init__(self, fixed: int, per_sample: int) -> None:
        self.fixed, self.per_sample = fixed, per_sample
        self.sizes: list[int] = []
        self.refs: list[int] = []
        self.phases: Phases = []
        self.batch_one: Phases = []  # moments at batch 1 only (slow_conv2d)

    def new(self, per_sample: int) -> int:
        self.sizes.append(per_sample)
        self.refs.append(1)
        self.per_sample += per_sample
        return len(self.sizes) - 1

    def hold(self, t: int) -> int:
        self.refs[t] += 1
        return t

    def drop(self, *tensors: int) -> None:
        for t in tensors:
            self.refs[t] -= 1
            if self.refs[t] == 0:
                self.per_sample -= self.sizes[t]

    def mark(self, op_fixed: int = 0, op_per_sample: int = 0) -> None:
        """A candidate peak, with bytes alive only inside the op at this moment."""
        self.phases.append((self.fixed + op_fixed, self.per_sample + op_per_sample))

    def mark_batch_one(self, op_fixed: int = 0, op_per_sample: int = 0) -> None:
        self.batch_one.append((self.fixed + op_fixed, self.per_sample + op_per_sample))


def _pad(channels: int, block: int) -> int:
    return -(-channels // block) * block


def _slow_at_batch_one(op: Op) -> bool:
    """PyTorch's choice at batch 1 (``use_mkldnn`` in ``Convolution.cpp``): oneDNN
    only for kernels larger than 3x3 or inputs of more than 20480 elements."""
    kh, kw = op.module.kernel_size
    return not (kh > 3 and kw > 3) and math.prod(op.inp) <= 20480


class _ChainReplay:
    """:func:`chain_phases`' replay; bytes, not elements (``d`` per float)."""

    def __init__(self, ops: list[Op], model: nn.Module, optimizer: str, d: int) -> None:
        self.ops, self.d, self.block = ops, d, CONV_BLOCK
        self.sizes = [p.numel() for p in model.parameters()]
        layers = sum(op.kind in ("conv", "linear") for op in ops)
        self.convs = any(op.kind == "conv" for op in ops)
        self.graph_overhead = ONEDNN_GRAPH_OVERHEAD if self.convs else 0
        fixed = sum(self.sizes) * d * (1 + OPTIMIZER_STATE[optimizer])
        fixed += STEP_OVERHEAD + STEP_OVERHEAD_PER_LAYER * layers + self.graph_overhead
        self.live = _Live(fixed, math.prod(ops[0].inp) * d + LABEL_BYTES)
        self.optimizer = optimizer
        self.saved: list[list[int]] = []  # per op, the tensors autograd keeps
        self.recorded: list[bool] = []  # per op: autograd records it (output needs grad)

    def params(self, op: Op) -> int:
        return sum(p.numel() for p in op.module.parameters()) * self.d if op.module else 0

    def conv_geometry(self, op: Op) -> tuple[int, int, int, int, int, int]:
        c_in, c = op.inp[0], op.out[0]
        kh, kw = op.module.kernel_size
        return c_in, c, math.prod(op.inp[1:]), math.prod(op.out[1:]), kh * kw, self.d

    def forward(self) -> int:
        """Every op's output (and what lives only inside it); returns the logits."""
        live, d, k = self.live, self.d, self.block
        x = live.new(0)  # the batch, counted in per_sample for good
        live.hold(x)
        grad = False
        for op in self.ops:
            has_params = op.kind in ("conv", "linear", "bn")
            record = grad or has_params
            saved: list[int] = []
            if op.kind == "conv":
                c_in, c, hw_in, hw_out, kk, _ = self.conv_geometry(op)
                weights = _pad(c, k) * (_pad(c_in, k) if c_in >= k else c_in) * kk * d
                if c_in >= k:
                    live.mark(weights, (_pad(c_in, k) * hw_in + _pad(c, k) * hw_out) * d)
                live.mark(weights, _pad(c, k) * hw_out * d + c * hw_out * d)
                if _slow_at_batch_one(op):  # im2col columns, then the output
                    live.mark_batch_one(0, (c_in * kk + c) * hw_out * d)
            out = x if op.kind == "view" else live.new(math.prod(op.out) * d)
            if op.kind == "view":
                live.hold(x)
            if op.kind == "maxpool" and record:
                saved.append(live.new(math.prod(op.out) * INDEX_BYTES))
            elif op.kind == "maxpool":
                live.drop(live.new(math.prod(op.out) * INDEX_BYTES))
            if op.kind == "dropout":
                saved.append(live.new(math.prod(op.out) * d))
            live.mark()
            if record:
                if op.kind in ("conv", "linear", "bn", "act_in", "maxpool"):
                    saved.append(live.hold(x))
                elif op.kind == "relu":
                    saved.append(live.hold(out))
            if op.kind == "dropout" and not record:
                live.drop(saved.pop())
            live.drop(x)
            live.mark()
            self.saved.append(saved)
            self.recorded.append(record)
            x, grad = out, record
        return x

    def loss(self, logits: int) -> int:
        """Log-softmax (saved) and the scalar loss; then the loss's backward: nll and
        log-softmax gradients; returns the logits' gradient and the saved output."""
        live = self.live
        n = self.live.sizes[logits]
        log_softmax = live.new(n)
        live.mark()
        live.drop(logits)
        nll_grad = live.new(n)
        logits_grad = live.new(n)
        live.mark()
        live.drop(nll_grad)
        self.log_softmax = log_softmax
        return logits_grad

    def backward(self, g_out: int) -> None:
        """The recorded ops, last first (module doc)."""
        live, d, k = self.live, self.d, self.block
        for i in reversed(range(len(self.ops))):
            op = self.ops[i]
            if not self.recorded[i]:
                break
            needs_in = i > 0 and self.recorded[i - 1]
            if op.kind == "conv":
                c_in, c, hw_in, hw_out, kk, _ = self.conv_geometry(op)
                blocked_w = _pad(c, k) * _pad(c_in, k) * kk * d
                both = (_pad(c, k) * hw_out + _pad(c_in, k) * hw_in) * d
                slow = _slow_at_batch_one(op)
                g_in = None
                if needs_in:
                    live.mark(blocked_w, both)
                    live.mark(0, (_pad(c_in, k) + c_in) * hw_in * d)
                    if slow:  # column gradients, folded into the input gradient
                        live.mark_batch_one(0, (c_in * kk * hw_out + c_in * hw_in) * d)
                    g_in = live.new(c_in * hw_in * d)
                live.mark(blocked_w, both)
                if slow:  # the input unfolded again for the weight gradient
                    live.mark_batch_one(0, c_in * kk * hw_out * d)
                live.fixed += self.params(op)
                live.mark(blocked_w)
            elif op.kind == "view":
                g_in = live.hold(g_out)
            else:
                g_in = live.new(math.prod(op.inp) * d) if needs_in else None
                if op.kind == "dropout":  # grad * noise: in place of nothing
                    pass
                live.fixed += self.params(op)
                live.mark()
            live.drop(g_out)
            if i == len(self.ops) - 1:
                live.drop(self.log_softmax)
            live.drop(*self.saved[i])
            live.mark()
            if g_in is None:
                break
            g_out = g_in

    def optimizer_step(self) -> None:
        """The graph (and oneDNN's objects) is freed; the step's workspace appears."""
        self.live.fixed += OPTIMIZER_WORKSPACE[self.optimizer] * max(self.sizes) * self.d
        self.live.fixed -= self.graph_overhead
        self.live.mark()

    def run(self) -> Phases:
        self.backward(self.loss(self.forward()))
        self.optimizer_step()
        phases = list(self.live.phases)
        phases += [(f + s, BATCH_ONE_ONLY - f - s) for f, s in self.live.batch_one]
        return phases


def chain_phases(
    model: nn.Module, in_shape: tuple[int, int, int], optimizer: str, dtype_bytes: int = 4
) -> Phases:
    """``(fixed_bytes, bytes_per_sample)`` at each candidate peak of one training step
    of chain ``model`` at its current widths (``replay.step_phases``' contract; the
    batch-1-only phases have a negative slope, module doc)."""
    return _ChainReplay(trace(model, in_shape), model, optimizer, dtype_bytes).run()
