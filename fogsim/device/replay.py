"""One training step of a FogNet, replayed allocation by allocation (the memory model's
core; ``fogsim.device.memory`` holds the why, the measurements and the public API).

:func:`step_phases` returns ``(fixed_bytes, bytes_per_sample)`` of live heap at every
moment of the step where the total may peak: forward (convolutions as oneDNN runs
them), the loss, backward (last layer first), the optimizer step; at batch ``b`` the
peak is ``max(f + s * b)`` over those moments.
"""

from __future__ import annotations

import math

import torch

from fogsim.device.arch import Arch
from fogsim.device.models import KERNEL

OPTIMIZER_STATE = {"sgd": 0, "sgd-momentum": 1, "adam": 2}  # buffers per parameter
# the single-tensor Adam step builds ``denom`` from two temporaries the size of the
# parameter it is updating: 2x the largest tensor
OPTIMIZER_WORKSPACE = {"sgd": 0, "sgd-momentum": 0, "adam": 2}
LABEL_BYTES = 8  # int64 labels
KERNEL_PIXELS = KERNEL * KERNEL
# oneDNN's backward-weights kernel reads a 3-channel input as it is; any other channel
# count (1, 2, 4-7 measured) first gets a blocked copy. By the heap's log of the
# allocations: 3 -> 5 channels, one 8-channel buffer (the output gradient's); 1 -> 5 and
# 2 -> 5, two. Charged for an RGB image, that copy made the model up to 1.66x the heap,
# so it is not charged there. A 3-channel map inside the network is read as it is too,
# but its copy stays charged: within 1.15x of the heap (LeNet-5 at 3-3-3-3 and 3-8-60-42
# in the chain grid), and uncharged it would move the figures of every benchmark run
# whose CNNs pass through 3 channels (revision 4 moves none).
PLAIN_IMAGE_CHANNELS = 3

# Per-step bookkeeping the tensors do not show (module doc, "Bookkeeping"), measured
# with the heap counter: 13.0 KB for one linear layer, +3.0..3.5 KB per further layer;
# 12.5 KB + 3.3 KB per layer is the upper envelope, +1 KB for run-to-run spread.
STEP_OVERHEAD = 13_500
STEP_OVERHEAD_PER_LAYER = 3_300
# At the optimizer step the graph is gone, and with it part of its per-layer records:
# charged the whole, Adam's step (the only one that peaks there) was 12-15 KB over the
# heap on MLPs of a few neurons (up to 1.17x; their other steps 6-7 KB); charged none,
# 2.8 KB over on the widest CNNs.
GRAPH_RECORDS_LEFT = 0.5
# oneDNN's per-call primitive, memory-descriptor and small scratch objects of the
# convolutions (2-7 KB each): 25.5-30 KB more while the graph lives, gone by the step;
# on a step at a new shape (after a pruning, a new batch) building the primitives
# takes up to 2.0 KB more for a moment (measured 31.45-33.0 KB in all; revision 5),
# and on a narrow CNN with plain SGD, packed to its budget, 0.43 KB more than revision
# 5 charged (revision 6: 1.07 KB above that now).
ONEDNN_GRAPH_OVERHEAD = 35_500


def conv_block() -> int:
    """Channel block of oneDNN's CPU convolutions here: 8 floats (AVX2) or 16 (AVX-512).

    oneDNN computes in "nChw8c"/"nChw16c" layouts whose channel count is padded up to
    the vector width, so a 1-channel map costs 8x (AVX2) in its blocked copy. Measured
    on AVX2. 16 follows oneDNN's layout choice on AVX-512, but the model built with it
    was measured to over-count there (a 1-1 channel CNN at batch 1: 194,164 B modelled,
    114,976 B by the heap), which is one reason ``fogsim/__init__`` pins AVX2 kernels:
    the 16 applies only where a user unpins them."""
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


CONV_BLOCK = conv_block()


def step_overhead(arch: Arch, per_layer: float = 1.0) -> int:
    """Bytes of per-step bookkeeping beyond tensor data while the graph lives, with
    ``per_layer`` of :data:`STEP_OVERHEAD_PER_LAYER` for each layer (the forward and
    backward phases add :data:`ONEDNN_GRAPH_OVERHEAD` when there are convs)."""
    layers = len(arch.channels) + len(arch.hidden) + 1
    return STEP_OVERHEAD + int(per_layer * STEP_OVERHEAD_PER_LAYER) * layers


def step_phases(
    arch: Arch, optimizer: str = "sgd", dtype_bytes: int = 4, conv_block: int | None = None
) -> list[tuple[int, int]]:
    """``(fixed_bytes, bytes_per_sample)`` of live heap at each candidate peak of one
    training step of ``arch`` with ``optimizer`` (convolutions' channels padded to
    ``conv_block``, default :data:`CONV_BLOCK`)."""
    step = _StepReplay(arch, optimizer, dtype_bytes, conv_block or CONV_BLOCK)
    step.forward()
    step.loss()
    step.backward_head()
    step.backward_convs()
    step.optimizer_step()
    return step.phases


class _StepReplay:
    """The live bytes of one training step, replayed in allocation order.

    ``fixed`` counts batch-independent bytes (parameters, optimizer state, gradients as
    they appear, bookkeeping), ``per_sample`` the bytes per sample of the batch (input,
    activations, their gradients); :meth:`mark` records a moment where the total may
    peak, with anything that lives only inside the op at that moment (oneDNN's blocked
    copies).
    """

    def __init__(self, arch: Arch, optimizer: str, dtype_bytes: int, block: int) -> None:
        self.arch, self.optimizer, self.d, self.block = arch, optimizer, dtype_bytes, block
        self.sizes = [math.prod(s) for s in arch.param_shapes()]
        # the oneDNN objects of the convolutions live with the graph (module doc)
        self.graph_overhead = ONEDNN_GRAPH_OVERHEAD if arch.channels else 0
        params_and_state = sum(self.sizes) * self.d * (1 + OPTIMIZER_STATE[optimizer])
        self.fixed = params_and_state + step_overhead(arch) + self.graph_overhead
        self.batch_bytes = math.prod(arch.in_shape) * self.d + LABEL_BYTES
        self.per_sample = self.batch_bytes  # the batch
        self.phases: list[tuple[int, int]] = []
        self.param = len(self.sizes) - 1  # the next bias whose gradient backward makes
        c_in, h, w = arch.in_shape
        self.blocks = []  # per conv block: (input channels, pixels, output a, pooled q)
        for c in arch.channels:
            self.blocks.append((c_in, h * w, c * h * w, c * (h // 2) * (w // 2)))
            c_in, h, w = c, h // 2, w // 2
        first = arch.channels[-1] * h * w if arch.channels else math.prod(arch.in_shape)
        self.fc_in = [first, *arch.hidden]  # input width of each linear layer

    def pad(self, channels: int) -> int:
        """Channels as oneDNN's blocked layout holds them: rounded up to the block."""
        return -(-channels // self.block) * self.block

    def mark(self, op_fixed: int = 0, op_per_sample: int = 0) -> None:
        """A candidate peak, with elements alive only inside the op at this moment."""
        d = self.d
        self.phases.append((self.fixed + op_fixed * d, self.per_sample + op_per_sample * d))

    def grads_of_next_layer(self) -> None:
        """Backward allocates one layer's weight and bias gradients."""
        self.fixed += (self.sizes[self.param - 1] + self.sizes[self.param]) * self.d
        self.param -= 2

    def forward(self) -> None:
        """Per conv block: the conv (a blocked output, reordered into the plain one; an
        input of ``>= block`` channels and the weights reordered to blocked first), the
        pre-activation and ReLU output together, then the pre-activation dies; the
        pooled output and its int64 max-pool indices are saved. Each hidden linear
        layer likewise keeps its ReLU output."""
        d, k = self.d, self.block
        for (c_in, hw, a, q), c in zip(self.blocks, self.arch.channels, strict=True):
            weights = self.pad(c) * (self.pad(c_in) if c_in >= k else c_in) * KERNEL_PIXELS
            if c_in >= k:
                self.mark(weights, (self.pad(c_in) + self.pad(c)) * hw)
            self.mark(weights, self.pad(c) * hw + a)  # blocked output + plain output
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
        """Conv blocks, last first: max-pool backward, ReLU backward, then the conv's
        backward in oneDNN's blocked layouts: data (blocked output grad and weights ->
        blocked input grad -> plain input grad; not for the image) and weights (blocked
        output grad and input -> blocked weight grad -> plain weight and bias grads; a
        3-channel image is read as it is, :data:`PLAIN_IMAGE_CHANNELS`)."""
        d = self.d
        for i in reversed(range(len(self.blocks))):
            c_in, hw, a, q = self.blocks[i]
            c = self.arch.channels[i]
            self.per_sample += a * d  # max-pool backward: grad of the ReLU output
            self.mark()
            self.per_sample -= q * d + q * 8  # pooled grad, indices
            self.per_sample += a * d  # ReLU backward
            self.mark()
            self.per_sample -= 2 * a * d  # ReLU output grad and saved ReLU output
            blocked_weights = self.pad(c) * self.pad(c_in) * KERNEL_PIXELS
            if i > 0:  # backward data
                self.mark(blocked_weights, (self.pad(c) + self.pad(c_in)) * hw)
                self.mark(0, self.pad(c_in) * hw + c_in * hw)
                self.per_sample += c_in * hw * d  # the input grad (previous pooled grad)
            plain = i == 0 and c_in == PLAIN_IMAGE_CHANNELS
            blocked_input = 0 if plain else self.pad(c_in) * hw
            self.mark(blocked_weights, self.pad(c) * hw + blocked_input)  # backward weights
            self.grads_of_next_layer()
            self.mark(blocked_weights)
            self.per_sample -= a * d  # conv output grad
            if i > 0:
                self.per_sample -= self.blocks[i - 1][3] * d  # saved conv input

    def optimizer_step(self) -> None:
        """The graph (and oneDNN's objects) is freed, and with it the batch: the loops
        index it inline (``model(x[idx])``), so its copy lives only as long as autograd
        holds it (charged here, Adam at batch 256 was 1.24x the heap); the step's
        workspace appears. Half the graph's per-layer bookkeeping is charged still
        (:data:`GRAPH_RECORDS_LEFT`)."""
        self.fixed -= self.graph_overhead
        self.fixed -= step_overhead(self.arch) - step_overhead(self.arch, GRAPH_RECORDS_LEFT)
        self.per_sample -= self.batch_bytes
        self.fixed += OPTIMIZER_WORKSPACE[self.optimizer] * max(self.sizes) * self.d
        self.mark()
