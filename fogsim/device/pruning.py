"""Hard (physical) neuron pruning of a FogNet, and the index maps a federation needs.

Pruning here really shrinks the dense layers: removing a neuron of group ``g``
drops a row (and bias entry) of its producer and the matching input columns of its
consumer (``consumer_span`` columns per channel where the last conv feeds the first
linear layer). Memory and compute shrink with it, which is the point of DynHP.

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

from fogsim.device.models import FogNet

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
    model: FogNet,
    group: int,
    keep: np.ndarray | Sequence[int],
    optimizer: torch.optim.Optimizer | None = None,
    kept: Kept | None = None,
) -> None:
    """Keep only neurons ``keep`` (local indices) of ``group``, in place.

    Rebuilds the producer's rows and bias and the consumer's input columns as new,
    smaller Parameters; gradients and optimizer state (momentum_buffer, exp_avg,
    exp_avg_sq, ...) are sliced the same way and re-keyed to the new Parameters.
    ``kept[group]`` (global indices) is updated when given.
    """
    keep_idx = torch.as_tensor(np.sort(np.asarray(keep, dtype=np.int64)))
    width = model.widths[group]
    if (
        len(keep_idx) == 0
        or int(keep_idx[-1]) >= width
        or len(set(keep_idx.tolist())) < len(keep_idx)
    ):
        raise ValueError(f"keep must be distinct, non-empty indices below width {width}")
    producer, consumer = model.producer(group), model.consumer(group)
    span = model.consumer_span(group)
    cols = (keep_idx[:, None] * span + torch.arange(span)[None, :]).reshape(-1)

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.index_select(0, keep_idx)

    def in_cols(t: torch.Tensor) -> torch.Tensor:
        return t.index_select(1, cols)

    with torch.no_grad():
        _swap_param(producer, "weight", optimizer, rows)
        _swap_param(producer, "bias", optimizer, rows)
        _swap_param(consumer, "weight", optimizer, in_cols)
    n = len(keep_idx)
    if isinstance(producer, nn.Conv2d):
        producer.out_channels = n
    else:
        producer.out_features = n
    if isinstance(consumer, nn.Conv2d):
        consumer.in_channels = n
    else:
        consumer.in_features = n * span
    if kept is not None:
        kept[group] = np.asarray(kept[group])[keep_idx.numpy()]


def _layout(state: Mapping[str, object]) -> tuple[int, int]:
    n_conv = len({k.split(".")[1] for k in state if k.startswith("convs.")})
    n_fc = len({k.split(".")[1] for k in state if k.startswith("fcs.")})
    return n_conv, n_fc


def _axis_indices(
    name: str,
    shape: Sequence[int],
    kept: Kept,
    n_conv: int,
    n_fc: int,
    spatial: int,
) -> list[np.ndarray]:
    """Global indices along each axis of parameter ``name`` held by a sub-model."""
    kind, layer, leaf = name.split(".")
    i = int(layer)
    out_group = i if kind == "convs" else (n_conv + i if i < n_fc - 1 else None)
    in_group = i - 1 if kind == "convs" else n_conv + i - 1
    axes = [np.asarray(kept[out_group]) if out_group is not None else np.arange(shape[0])]
    if leaf == "weight":
        if kind == "convs" and i == 0 or kind == "fcs" and i == 0 and n_conv == 0:
            axes.append(np.arange(shape[1]))
        elif kind == "fcs" and i == 0:  # the last conv's channels, `spatial` columns each
            ch = np.asarray(kept[n_conv - 1])
            axes.append((ch[:, None] * spatial + np.arange(spatial)[None, :]).reshape(-1))
        else:
            axes.append(np.asarray(kept[in_group]))
        axes += [np.arange(s) for s in shape[2:]]
    return axes


def _spatial(global_shapes: Mapping[str, Sequence[int]], n_conv: int) -> int:
    if n_conv == 0:
        return 1
    return global_shapes["fcs.0.weight"][1] // global_shapes[f"convs.{n_conv - 1}.weight"][0]


def submodel_index(global_shapes: Mapping[str, Sequence[int]], kept: Kept) -> dict[str, tuple]:
    """Per parameter, the numpy index of the global elements a sub-model holds (``np.ix_``
    over the axes it prunes, whole slices elsewhere)."""
    n_conv, n_fc = _layout(global_shapes)
    spatial = _spatial(global_shapes, n_conv)
    out = {}
    for name, shape in global_shapes.items():
        axes = _axis_indices(name, tuple(shape), kept, n_conv, n_fc, spatial)
        # full axes as slices: fancy indexing over a whole axis costs ~10x a slice
        picked = [d for d, a in enumerate(axes) if len(a) != shape[d]]
        grids = dict(zip(picked, np.ix_(*(axes[d] for d in picked)), strict=True))
        out[name] = tuple(grids.get(d, slice(None)) for d in range(len(axes)))
    return out


def submodel_shapes(
    global_shapes: Mapping[str, Sequence[int]], kept: Kept
) -> dict[str, tuple[int, ...]]:
    """Per parameter, the shape of the sub-model holding the neurons in ``kept``."""
    n_conv, n_fc = _layout(global_shapes)
    spatial = _spatial(global_shapes, n_conv)
    return {
        name: tuple(len(a) for a in _axis_indices(name, tuple(shape), kept, n_conv, n_fc, spatial))
        for name, shape in global_shapes.items()
    }


def extract_submodel(
    global_state: Mapping[str, torch.Tensor | np.ndarray], kept: Kept
) -> dict[str, torch.Tensor]:
    """Slice a global state dict to the neurons in ``kept`` (a sub-model state dict)."""
    index = submodel_index({k: np.shape(v) for k, v in global_state.items()}, kept)
    out = {}
    for name, value in global_state.items():
        whole = np.asarray(value)
        part = whole[index[name]]  # numpy: torch indexing with numpy indices is ~10x slower
        # an unpruned parameter comes back as a view: copy so the sub-model owns it
        out[name] = torch.from_numpy(part.copy() if np.shares_memory(part, whole) else part)
    return out


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


def kept_from_mask(mask: Mapping[str, np.ndarray], n_conv: int) -> Kept:
    """Recover ``kept`` from the masks of producer biases (inverse of scatter's mask)."""
    n_fc = len({k.split(".")[1] for k in mask if k.startswith("fcs.")})
    names = [f"convs.{i}.bias" for i in range(n_conv)]
    names += [f"fcs.{i}.bias" for i in range(n_fc - 1)]
    return [np.flatnonzero(np.asarray(mask[n])) for n in names]
