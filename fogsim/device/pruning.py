"""Hard (physical) neuron pruning of any chain model, and the index maps a federation needs.

Pruning here really shrinks the layers: removing a neuron of group ``g`` drops a row
(and bias entry, batch-norm entries) of the layer producing it and the matching input
columns of the next layer (several columns per channel where a flatten feeds a linear
layer). Memory and compute shrink with it, which is the point of DynHP. The groups
are read from the model's arrays as a chain (``fogsim.device.chain.ChainLayout``), so
fogsim's FogNet and a user's ``[model] factory`` model are pruned alike.

A pruned model remembers where its neurons came from with ``kept``: one sorted
int array per group of indices into the *global* (original) widths. With it a
server can slice the global model for a device (:func:`extract_submodel`) and put a
device's update back (:func:`scatter_add_submodel`, which also counts, per global
element, the weight of the devices holding it, for per-element averaging).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fogsim.device.chain import layer_of, layout_of, resize

Kept = list[np.ndarray]


def full_kept(widths: Sequence[int]) -> Kept:
    """The identity map of an unpruned model."""
    return [np.arange(w, dtype=np.int64) for w in widths]


def _swap_param(
    module: nn.Module,
    name: str,
    optimizer: torch.optim.Optimizer | None,
    slicer: Callable[[torch.Tensor], torch.Tensor],  # a fresh, smaller copy (index_select)
) -> None:
    """Replace ``module.<name>`` by ``slicer`` of it, with its grad and optimizer state.

    Memory: one tensor is rebuilt at a time and the old one is released before the next
    is built, so the peak is what was resident plus *one* new (smaller) tensor, not old
    + new of the parameter, its grad and every state buffer at once (``index_select``
    already copies: no ``clone``). Order: grad, then each state buffer, then the
    parameter (it keys the state, and nothing else is sliced from it)."""
    old = getattr(module, name)
    state = optimizer.state.pop(old, None) if optimizer is not None else None
    grad = None
    if old.grad is not None:
        grad = slicer(old.grad)
        old.grad = None  # the old gradient dies here
    if state is not None:
        for key in list(state):  # keys only: a list of items would keep every old buffer
            value = state[key]
            if torch.is_tensor(value) and value.shape == old.shape:
                state[key] = slicer(value)  # the dict held the only other reference
            del value
    param = nn.Parameter(slicer(old.detach()), requires_grad=old.requires_grad)
    param.grad = grad
    del grad
    setattr(module, name, param)
    if optimizer is not None:
        for group in optimizer.param_groups:
            group["params"] = [param if p is old else p for p in group["params"]]
        if state is not None:
            optimizer.state[param] = state
    del old  # the last reference (module, param_groups and state re-keyed): freed here


def remove_neurons(
    model: nn.Module,
    group: int,
    keep: np.ndarray | Sequence[int],
    optimizer: torch.optim.Optimizer | None = None,
    kept: Kept | None = None,
) -> None:
    """Keep only neurons ``keep`` (local indices) of ``group``, in place.

    Rebuilds every array of the group (``ChainLayout.members``: the producer's rows
    and bias, a batch norm's arrays and running statistics) and the next layer's input
    columns as new, smaller tensors; gradients and optimizer state (momentum_buffer,
    exp_avg, exp_avg_sq, ...) are sliced the same way and re-keyed to the new
    Parameters. ``kept[group]`` (global indices) is updated when given.
    """
    keep_idx = torch.as_tensor(np.sort(np.asarray(keep, dtype=np.int64)))
    layout = layout_of(model)
    width = layout.widths[group]
    if (
        len(keep_idx) == 0
        or int(keep_idx[-1]) >= width
        or len(set(keep_idx.tolist())) < len(keep_idx)
    ):
        raise ValueError(f"keep must be distinct, non-empty indices below width {width}")
    reader, span = layout.reader(group)
    cols = (keep_idx[:, None] * span + torch.arange(span)[None, :]).reshape(-1)

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.index_select(0, keep_idx)

    def in_cols(t: torch.Tensor) -> torch.Tensor:
        return t.index_select(1, cols)

    with torch.no_grad():  # state_dict order: the memory order _swap_param's doc assumes
        for name, slicer in [*((m, rows) for m in layout.members(group)), (reader, in_cols)]:
            layer, leaf = layer_of(model, name), name.rpartition(".")[2]
            if leaf in layer._parameters:
                _swap_param(layer, leaf, optimizer, slicer)
            else:  # a buffer: a batch norm's running statistics
                layer._buffers[leaf] = slicer(layer._buffers[leaf])
            resize(layer)
    if kept is not None:
        kept[group] = np.asarray(kept[group])[keep_idx.numpy()]


def submodel_index(global_shapes: Mapping[str, Sequence[int]], kept: Kept) -> dict[str, tuple]:
    """Per parameter, the numpy index of the global elements a sub-model holds (``np.ix_``
    over the axes it prunes, whole slices elsewhere: fancy indexing over a whole axis
    costs ~10x a slice)."""
    return layout_of(global_shapes).index(global_shapes, kept)


def submodel_shapes(
    global_shapes: Mapping[str, Sequence[int]], kept: Kept
) -> dict[str, tuple[int, ...]]:
    """Per parameter, the shape of the sub-model holding the neurons in ``kept``."""
    return layout_of(global_shapes).sub_shapes(global_shapes, kept)


def extract_submodel(
    global_state: Mapping[str, torch.Tensor | np.ndarray], kept: Kept
) -> dict[str, torch.Tensor]:
    """Slice a global state dict to the neurons in ``kept`` (a sub-model state dict that
    owns its tensors)."""
    whole = {k: np.asarray(v) for k, v in global_state.items()}  # numpy: torch's ~10x slower
    sub = layout_of({k: v.shape for k, v in whole.items()}).extract(whole, kept)
    # an unpruned parameter comes back as a view: copy so the sub-model owns it
    return {
        k: torch.from_numpy(v.copy() if np.shares_memory(v, whole[k]) else v)
        for k, v in sub.items()
    }


def scatter_add_submodel(
    num: Mapping[str, np.ndarray],
    den: Mapping[str, np.ndarray],
    sub_state: Mapping[str, torch.Tensor | np.ndarray],
    kept: Kept,
    weight: float = 1.0,
    index: Mapping[str, tuple] | None = None,
) -> None:
    """Add a sub-model into global-shaped accumulators, in place: ``weight * values``
    into ``num`` and ``weight`` into ``den`` exactly where it holds an element
    (``index``: :func:`submodel_index` of ``kept``, if the caller has it already).

    A server averaging over clients computes :func:`masked_mean`. Only the held
    elements are touched, so a small device's update costs its size, not the global
    model's.
    """
    if index is None:
        index = submodel_index({k: v.shape for k, v in num.items()}, kept)
    for name, value in sub_state.items():
        ix = index[name]
        num[name][ix] += weight * np.asarray(value, dtype=np.float64)  # not float32 products
        den[name][ix] += weight


def masked_mean(
    num: Mapping[str, np.ndarray], den: Mapping[str, np.ndarray], old: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Per element ``num / den`` where ``den > 0``, else ``old``'s value, in ``old``'s
    dtype: the average over the updates holding each element, elements none held
    unchanged."""
    return {
        k: np.where(den[k] > 0, num[k] / np.maximum(den[k], 1e-300), v).astype(v.dtype)
        for k, v in old.items()
    }
