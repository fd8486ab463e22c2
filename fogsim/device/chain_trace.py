"""A chain model's ops in forward order with their per-sample shapes: what
``fogsim.device.chain_replay`` replays.

The model is traced with ``torch.fx`` and its tensors' shapes propagated on a batch of
one (:func:`fx_trace`); each op gets the replay's kind of it (which tensors it saves
for backward: its input, its output, indices, a mask). A module or function with no
kind is refused naming it (:class:`fogsim.device.chain.ChainError`): its memory is
not known. Narrowed models of one skeleton reuse its trace (:func:`trace`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from fogsim.device.chain import ChainError

# per module type, the replay's kind: ``relu`` saves its output, ``act_in`` its input
MODULES = (
    (nn.Conv2d, "conv"), (nn.Linear, "linear"), (nn.BatchNorm1d | nn.BatchNorm2d, "bn"),
    (nn.ReLU | nn.Sigmoid | nn.Tanh, "relu"), (nn.Flatten | nn.Identity, "view"),
    (nn.GELU | nn.SiLU | nn.LeakyReLU | nn.ELU | nn.AvgPool2d, "act_in"),
    (nn.MaxPool2d | nn.AdaptiveMaxPool2d, "maxpool"),
)  # fmt: skip
FUNCTIONS: dict[Callable, str] = {
    torch.relu: "relu", nn.functional.relu: "relu", torch.sigmoid: "relu", torch.tanh: "relu",
    nn.functional.gelu: "act_in", nn.functional.silu: "act_in",
    nn.functional.max_pool2d: "maxpool", torch.flatten: "view",
}  # fmt: skip
METHODS = {"relu": "relu", "sigmoid": "relu", "tanh": "relu", "flatten": "view", "view": "view"}


@dataclass(frozen=True)
class Op:
    """One recorded op: its kind, per-sample input/output shapes, and for layers the
    module (``conv``/``linear``/``bn``)."""

    kind: str
    inp: tuple[int, ...]
    out: tuple[int, ...]
    module: nn.Module | None = field(default=None, compare=False)
    gelu: bool = False  # holds GELU's workspace (:data:`GELU_WORKSPACE`)
    name: str | None = None  # the module's name in the model


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return "mean" if module.output_size in (1, (1, 1), [1, 1]) else "act_in"
    if isinstance(module, nn.Dropout):
        return "dropout" if module.p > 0 else "view"
    kind = next((k for types, k in MODULES if isinstance(module, types)), None)
    if kind is None:
        raise ChainError(f"no memory rule for layer {type(module).__name__}")
    return kind


def trace(model: nn.Module, in_shape: tuple[int, int, int]) -> list[Op]:
    """The model's ops in forward order with per-sample shapes.

    Tracing takes milliseconds, replaying a fraction of one, and a bisection over
    widths asks for many widths of one model: so the fx trace is kept per skeleton
    (the model's class, its modules' names, types and width-free hyperparameters)
    and a narrowed model's shapes are computed from its layers' weights (a conv or
    linear layer sets the channels or features; every other op keeps its input's
    channels and its traced spatial size; a flatten multiplies). A skeleton whose
    trace these rules do not reproduce is traced anew every time."""
    skeleton = (
        type(model),
        tuple(in_shape),
        *((n, type(m), _hyper(m)) for n, m in model.named_modules()),
    )
    if skeleton not in _TRACES:
        ops = fx_trace(model, in_shape)
        same = _reshaped(ops, model, in_shape) == ops  # the rules reproduce the trace
        _TRACES[skeleton] = [replace(op, module=None) for op in ops] if same else None
    ops = _TRACES[skeleton]
    return fx_trace(model, in_shape) if ops is None else _reshaped(ops, model, in_shape)


_TRACES: dict[tuple, list[Op] | None] = {}


def _hyper(module: nn.Module) -> tuple:
    """A module's hyperparameters that do not change with its widths."""
    if isinstance(module, nn.Conv2d):
        m = module
        return m.kernel_size, m.stride, m.padding, m.dilation, m.groups, m.padding_mode
    if isinstance(module, nn.Linear | nn.BatchNorm1d | nn.BatchNorm2d):
        return ()
    return (module.extra_repr(),)


def _reshaped(ops: list[Op], model: nn.Module, in_shape: tuple[int, int, int]) -> list[Op]:
    """``ops`` (traced on a model of this skeleton) with ``model``'s shapes (trace)."""
    shape, out_ops = tuple(in_shape), []
    for op in ops:
        module = model.get_submodule(op.name) if op.name is not None else None
        if op.kind in ("conv", "linear"):
            out = (module.weight.shape[0], *op.out[1:])
        elif op.kind == "view":
            out = (math.prod(shape),) if len(op.out) == 1 else shape
        else:
            out = (shape[0], *op.out[1:])
        out_ops.append(Op(op.kind, shape, out, module, op.gelu, op.name))
        shape = out
    return out_ops


def fx_trace(model: nn.Module, in_shape: tuple[int, int, int]) -> list[Op]:
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
            raise ChainError(f"no memory rule for {node.op} {node.target}")
        gelu = isinstance(module, nn.GELU) or node.target is nn.functional.gelu
        name = node.target if module is not None else None
        ops.append(Op(kind, inp, out, module, gelu, name))
    return ops
