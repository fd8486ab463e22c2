"""One training step of any chain model (``fogsim.device.chain``), replayed allocation
by allocation at its current (possibly narrowed) widths: ``fogsim.device.replay``
generalised from FogNet to every layer ``chain.check_model`` admits.

Why: a factory model's step is measured by the heap counter for the dense model only
(``fogsim.device.factory``), but pruning and the sub-model strategies need it at any
widths, many times per round. So the model is traced with ``torch.fx`` (ops and
per-sample shapes, batch 1) and each op replayed with the rules PyTorch follows on CPU
(one thread), each found and checked with the heap counter (micro-measurements of
single ops, then whole steps: ``tests/device/test_chain_memory.py``):

- forward: every op allocates its output (``Flatten``/``Identity`` are views);
  max-pooling also int64 indices; ``Dropout`` (CPU: ``input * noise``) a float noise;
  GELU's kernel a batch-independent workspace (:data:`GELU_WORKSPACE`); convolutions
  oneDNN's blocked copies as ``replay`` counts them (channels padded to
  ``replay.CONV_BLOCK``), for any kernel, stride and padding;
- autograd saves Linear/Conv/BatchNorm/(avg-, max-)pooling/GELU/SiLU/LeakyReLU/ELU
  inputs, ReLU/Sigmoid/Tanh outputs, max-pool indices, Dropout's noise; nothing for
  ``AdaptiveAvgPool2d(1)`` (a ``mean``), nor for an op on the image before the first
  layer with parameters (not recorded); a tensor dies when neither the next op nor a
  saved slot holds it;
- backward, last op first: the input's gradient (not for the first recorded op),
  the parameters' gradients, BatchNorm a temporary the size of its input, convs
  their blocked copies (a strided conv of ``>= block`` input channels three maps the
  size of its blocked input); then the output's gradient and the saved tensors die;
- which algorithm a conv runs depends on the batch (:func:`uses_onednn`): at batch
  1 a kernel of at most 3x3 on a small input, and below batch 16 an unstrided 1x1
  kernel, run PyTorch's ``slow_conv2d``: im2col columns (``c_in * kh * kw`` per
  output pixel) instead of blocked copies, and no oneDNN objects;
- bookkeeping as ``replay`` counts it, growing as the forward records layers
  (``STEP_OVERHEAD_PER_LAYER`` per Linear/Conv, half per BatchNorm: ~2 KB measured),
  and ``ONEDNN_GRAPH_OVERHEAD`` while a graph with a oneDNN conv lives; at the
  optimizer step ``GRAPH_RECORDS_LEFT`` of the per-layer part.

On a FogNet the replay gives ``replay.step_phases``' peak exactly. The phases are
pure in (model structure, widths, input shape, optimizer, batch class), so they are
cached (:func:`chain_phases`).
"""

from __future__ import annotations

import math

from torch import nn

from fogsim.device import replay
from fogsim.device.chain_trace import Op, trace

Phases = list[tuple[int, int]]
# GELU's CPU kernel holds a batch-independent workspace while it runs (micro-measured:
# 12.2-13.6 KB forward, 28.1-28.2 KB backward above what ReLU's op holds, 16..65536
# elements; none for a single element: GELU of width 1 at batch 1 is over-counted), and
# ~8.4 KB more on its first call at a new shape (19.8-19.9 KB and 36.3-36.4 KB:
# charged 13 and 29 KB until revision 7, such a step of an MLP with GELU went up to
# 1.8 KB over the model); other activations hold nothing beyond the per-step bookkeeping
GELU_WORKSPACE = (21_000, 37_000)
BN_BACKWARD_TEMPORARIES = 1  # input-sized maps BatchNorm's backward holds (measured)
INDEX_BYTES = 8  # int64 max-pool indices
BATCH_ONE_ONLY = -(1 << 40)  # the slope of a phase that holds at batch 1 only (chain_phases)


class _Live:
    """Live bytes of one step: ``fixed`` (parameters, optimizer state, gradients,
    bookkeeping) and ``per_sample`` (batch, activations, their gradients), tensors
    with reference counts (the flowing value and each saved slot hold one)."""

    def __init__(self, fixed: int, per_sample: int) -> None:
        self.fixed, self.per_sample = fixed, per_sample
        self.sizes: list[int] = []
        self.refs: list[int] = []
        self.phases: Phases = []

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


def _pad(channels: int, block: int) -> int:
    return -(-channels // block) * block


def _maps(shape: tuple[int, ...]) -> tuple[int, int]:
    """Channels and pixels of a per-sample ``(c, h, w)`` shape."""
    return shape[0], math.prod(shape[1:])


def uses_onednn(conv: nn.Conv2d, inp: tuple[int, ...], batch: int) -> bool:
    """PyTorch's choice for a CPU float32 conv with one thread (``use_mkldnn`` in
    ``aten/src/ATen/native/Convolution.cpp``): oneDNN, except for an unstrided 1x1
    kernel below batch 16, or at batch 1 a kernel of at most 3x3 on an input of at
    most 20480 elements; those run ``slow_conv2d`` (im2col)."""
    kh, kw = conv.kernel_size
    one_by_one = (kh, kw) == (1, 1) and conv.stride == (1, 1) and conv.dilation == (1, 1)
    if one_by_one and batch < 16:
        return False
    return (kh > 3 and kw > 3) or batch > 1 or batch * math.prod(inp) > 20480


class _ChainReplay:
    """:func:`chain_phases`' replay for convolutions as PyTorch runs them at ``batch``
    (only which algorithm each conv uses depends on it); bytes, not elements."""

    def __init__(self, ops: list[Op], model: nn.Module, optimizer: str, d: int, batch: int) -> None:
        self.ops, self.d, self.block, self.batch = ops, d, replay.CONV_BLOCK, batch
        self.sizes = [p.numel() for p in model.parameters()]
        # oneDNN's per-call objects, while the graph lives: only where it runs a conv
        onednn = any(op.kind == "conv" and uses_onednn(op.module, op.inp, batch) for op in ops)
        self.graph_overhead = replay.ONEDNN_GRAPH_OVERHEAD if onednn else 0
        fixed = sum(self.sizes) * d * (1 + replay.OPTIMIZER_STATE[optimizer])
        fixed += replay.STEP_OVERHEAD + self.graph_overhead
        self.batch_bytes = math.prod(ops[0].inp) * d + replay.LABEL_BYTES
        self.live = _Live(fixed, self.batch_bytes)
        self.optimizer = optimizer
        self.saved: list[list[int]] = []  # per op, the tensors autograd keeps
        self.recorded: list[bool] = []  # per op: autograd records it (output needs grad)
        self.records = 0  # the graph's per-layer bookkeeping, as forward charges it

    def params(self, op: Op) -> int:
        return sum(p.numel() for p in op.module.parameters()) * self.d if op.module else 0

    def conv_forward(self, op: Op) -> None:
        """oneDNN: an input of ``>= block`` channels and the weights reordered to
        blocked, a blocked output reordered into the plain one (``replay``); im2col:
        the columns (``c_in * kh * kw`` per output pixel) and the output."""
        live, d, k = self.live, self.d, self.block
        (c_in, hw_in), (c, hw_out) = _maps(op.inp), _maps(op.out)
        kk = math.prod(op.module.kernel_size)
        if not uses_onednn(op.module, op.inp, self.batch):
            live.mark(0, (c_in * kk + c) * hw_out * d)
            return
        weights = _pad(c, k) * (_pad(c_in, k) if c_in >= k else c_in) * kk * d
        if c_in >= k:
            live.mark(weights, (_pad(c_in, k) * hw_in + _pad(c, k) * hw_out) * d)
        live.mark(weights, _pad(c, k) * hw_out * d + c * hw_out * d)

    def conv_backward(self, op: Op, needs_in: bool) -> int | None:
        """oneDNN: data (blocked output grad and weights -> blocked input grad ->
        plain input grad; not for the image) then weights (blocked output grad and
        input -> blocked weight grad; a strided conv of ``>= block`` input channels
        holds a map the size of its blocked input instead of the smaller blocked
        output grad: measured for 3x3 and 5x5, stride 2, 1..32 channels; a 3-channel
        image is read as it is, ``replay.PLAIN_IMAGE_CHANNELS``); im2col:
        column gradients folded into the input grad, then the input unfolded again
        for the weight grad. Returns the input gradient."""
        live, d, k = self.live, self.d, self.block
        (c_in, hw_in), (c, hw_out) = _maps(op.inp), _maps(op.out)
        kk = math.prod(op.module.kernel_size)
        onednn = uses_onednn(op.module, op.inp, self.batch)
        blocked_w = _pad(c, k) * _pad(c_in, k) * kk * d
        both = (_pad(c, k) * hw_out + _pad(c_in, k) * hw_in) * d
        columns = c_in * kk * hw_out * d
        g_in = None
        if needs_in:
            if onednn:
                live.mark(blocked_w, both)
                live.mark(0, (_pad(c_in, k) + c_in) * hw_in * d)
            else:
                live.mark(0, columns + c_in * hw_in * d)
            g_in = live.new(c_in * hw_in * d)
        if onednn:
            if not needs_in and c_in == replay.PLAIN_IMAGE_CHANNELS:  # an RGB image
                both = _pad(c, k) * hw_out * d
            if op.module.stride != (1, 1) and c_in >= k:  # measured: 3 input-sized maps
                both = (_pad(c_in, k) * hw_in + max(_pad(c, k) * hw_out, _pad(c_in, k) * hw_in)) * d
            live.mark(blocked_w, both)
            live.fixed += self.params(op)
            live.mark(blocked_w)
        else:
            live.fixed += self.params(op)
            live.mark(0, columns)
        return g_in

    def forward(self) -> int:
        """Every op's output (and what lives only inside it); returns the logits."""
        live, d = self.live, self.d
        x = live.new(0)  # the batch, counted in per_sample for good
        live.hold(x)
        grad = False
        for op in self.ops:
            record = grad or op.kind in ("conv", "linear", "bn")
            records = 0
            if op.kind in ("conv", "linear"):  # its autograd nodes, saved records
                records = replay.STEP_OVERHEAD_PER_LAYER
            elif op.kind in ("bn", "dropout"):  # measured ~2 KB more per batch norm
                # (resnet_like), ~1.3 KB per dropout (an independent check, 6 of them)
                records = replay.STEP_OVERHEAD_PER_LAYER // 2
            live.fixed += records
            self.records += records
            saved: list[int] = []
            if op.kind == "conv":
                self.conv_forward(op)
            if op.kind == "view":
                out = live.hold(x)
            else:
                out = live.new(math.prod(op.out) * d)
            if op.kind == "maxpool":  # int64 indices, kept for backward
                saved.append(live.new(math.prod(op.out) * INDEX_BYTES))
            if op.kind == "dropout":  # CPU dropout is input * noise: the noise is kept
                saved.append(live.new(math.prod(op.out) * d))
            live.mark(GELU_WORKSPACE[0] if op.gelu else 0)
            if not record:  # autograd keeps nothing of an op on the image alone
                live.drop(*saved)
                saved = []
            elif op.kind in ("conv", "linear", "bn", "act_in", "maxpool"):
                saved.append(live.hold(x))
            elif op.kind == "relu":
                saved.append(live.hold(out))
            live.drop(x)
            live.mark()
            self.saved.append(saved)
            self.recorded.append(record)
            x, grad = out, record
        return x

    def loss(self, logits: int) -> int:
        """Log-softmax (saved) and the scalar loss; then the loss's backward: nll and
        log-softmax gradients. Returns the logits' gradient."""
        live = self.live
        n = self.live.sizes[logits]
        self.log_softmax = live.new(n)
        live.mark()
        live.drop(logits)
        nll_grad = live.new(n)
        logits_grad = live.new(n)
        live.mark()
        live.drop(nll_grad)
        return logits_grad

    def backward(self, g_out: int) -> None:
        """The recorded ops, last first: input gradient (none for the first recorded
        op; a view's is a view), parameter gradients, then the output gradient and
        what the op saved are freed (the saved log-softmax with the last op's)."""
        live, d = self.live, self.d
        for i in reversed(range(len(self.ops))):
            op = self.ops[i]
            if not self.recorded[i]:
                break
            needs_in = i > 0 and self.recorded[i - 1]
            if op.kind == "conv":
                g_in = self.conv_backward(op, needs_in)
            elif op.kind == "view":
                g_in = live.hold(g_out)
            else:
                g_in = live.new(math.prod(op.inp) * d) if needs_in else None
                live.fixed += self.params(op)
                # batch norm's backward holds a temporary the size of its input
                temporary = (
                    BN_BACKWARD_TEMPORARIES * math.prod(op.inp) * d if op.kind == "bn" else 0
                )
                live.mark(GELU_WORKSPACE[1] if op.gelu else 0, temporary)
            live.drop(g_out)
            if i == len(self.ops) - 1:
                live.drop(self.log_softmax)
            live.drop(*self.saved[i])
            live.mark()
            if g_in is None:
                break
            g_out = g_in

    def run(self) -> Phases:
        self.backward(self.loss(self.forward()))
        # the optimizer step: the graph (and oneDNN's objects) is gone, and with it the
        # batch (indexed inline by the loops) and part of the graph's records (as in
        # ``replay._StepReplay.optimizer_step``), the workspace appears
        self.live.fixed += replay.OPTIMIZER_WORKSPACE[self.optimizer] * max(self.sizes) * self.d
        self.live.fixed -= self.graph_overhead
        self.live.fixed -= self.records - int(replay.GRAPH_RECORDS_LEFT * self.records)
        self.live.per_sample -= self.batch_bytes
        self.live.mark()
        return self.live.phases


def structure_key(model: nn.Module, in_shape: tuple[int, int, int]) -> tuple:
    """What the phases depend on: the model's class (its forward), every submodule's
    name, type and hyperparameters (``extra_repr``: sizes, kernels, strides, ``p``...),
    and every array's shape; two models with equal keys replay alike. A forward that
    branches on state outside its modules (not seen here) must not change ops."""
    modules = tuple((n, type(m), m.extra_repr()) for n, m in model.named_modules())
    arrays = tuple(tuple(t.shape) for t in (*model.parameters(), *model.buffers()))
    return type(model), modules, arrays, tuple(in_shape)


def chain_phases(
    model: nn.Module,
    in_shape: tuple[int, int, int],
    optimizer: str,
    dtype_bytes: int = 4,
    batch: int | None = None,
) -> Phases:
    """``(fixed_bytes, bytes_per_sample)`` at each candidate peak of one training step
    of chain ``model`` at its current widths (``replay.step_phases``' contract).

    Which algorithm PyTorch runs a conv with depends on the batch (:func:`uses_onednn`):
    ``batch`` gives the phases of the step at that batch. ``None`` gives phases valid
    at any batch: those of large batches, plus each batch-1 phase ``(f, s)`` as
    ``(f + s - BATCH_ONE_ONLY, BATCH_ONE_ONLY)``, ``f + s`` at batch 1 and far below
    zero above it (``memory.max_batch_size`` ignores slopes <= 0). At batch 1 that
    is the larger of both algorithms' peaks (up to 2x the heap for 3x3 convs of 1-2
    channels; pass ``batch`` for the exact figure); below batch 16 an unstrided 1x1
    conv runs ``slow_conv2d`` without columns, which large batches' phases bound.

    Cached on :func:`structure_key` (a bisection over widths asks for the same
    shapes again); the model may live on the ``meta`` device."""
    # only three batch classes choose algorithms differently (uses_onednn)
    batch_class = None if batch is None else 1 if batch == 1 else 2 if batch < 16 else 16
    key = (structure_key(model, in_shape), optimizer, dtype_bytes, batch_class)
    phases = _CACHE.get(key)
    if phases is None:
        if len(_CACHE) >= CACHE_SIZE:
            _CACHE.clear()
        phases = _CACHE[key] = _phases(model, in_shape, optimizer, dtype_bytes, batch_class)
    return list(phases)


CACHE_SIZE = 1 << 14
_CACHE: dict[tuple, tuple[tuple[int, int], ...]] = {}


def _phases(
    model: nn.Module, in_shape: tuple[int, int, int], optimizer: str, d: int, batch: int | None
) -> tuple[tuple[int, int], ...]:
    ops = trace(model, in_shape)
    if batch is not None:
        return tuple(_ChainReplay(ops, model, optimizer, d, batch).run())
    large = _ChainReplay(ops, model, optimizer, d, 1 << 20).run()
    one = _ChainReplay(ops, model, optimizer, d, 1).run()
    return tuple(large + [(f + s - BATCH_ONE_ONLY, BATCH_ONE_ONLY) for f, s in one])
