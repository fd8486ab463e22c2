"""Merging models across tiers so that sums and counts add up exactly.

Every strategy averages each parameter with some weight: mask-union and the other
sub-model strategies ``sum n_k m_k w_k / sum n_k m_k`` over the clients holding it,
FedAvg ``sum n_k w_k / sum n_k``. A fog's model is such an average over its devices,
and its *weights* are the denominator (per parameter for sub-models, one number for
dense strategies). The cloud merges fog models with those weights,

    w = sum_f W_f w_f / sum_f W_f,   W_f w_f = the fog's numerator,

which is exactly the average over all the fogs' devices at once: one fog holding every
device gives the flat result. A parameter no fog holds keeps its global value.

Over several fog rounds per cloud round a fog's weight is the sum of its rounds'
weights (the examples trained behind each parameter since the last cloud round), as
HierFAVG weights an edge server by the data behind it.
"""

from __future__ import annotations

import math

import numpy as np

from fogsim.device.pruning import masked_mean

Weights = dict[str, np.ndarray] | float  # per parameter, or one number for the model
State = dict[str, np.ndarray]


def add(total: Weights | None, more: Weights) -> Weights:
    """Two rounds' weights together."""
    if total is None:
        return more
    if isinstance(total, dict) and isinstance(more, dict):
        return {k: total[k] + more[k] for k in total}
    if isinstance(total, dict) or isinstance(more, dict):
        dense = total if isinstance(total, dict) else more
        scalar = more if isinstance(total, dict) else total
        return {k: v + float(scalar) for k, v in dense.items()}  # type: ignore[arg-type]
    return float(total) + float(more)


def per_parameter(weights: Weights, state: State) -> State:
    if isinstance(weights, dict):
        return {k: np.asarray(weights[k], dtype=np.float64) for k in state}
    return {k: np.full(v.shape, float(weights)) for k, v in state.items()}


def merge(old: State, models: list[tuple[State, Weights]]) -> tuple[State, State]:
    """(new global model, per-parameter weight behind it) from fog ``models`` (each
    with its weights); unheld parameters keep ``old``'s value."""
    num = {k: np.zeros(v.shape) for k, v in old.items()}
    den = {k: np.zeros(v.shape) for k, v in old.items()}
    for state, weights in models:
        w = per_parameter(weights, old)
        for k in old:
            num[k] += w[k] * state[k]
            den[k] += w[k]
    new = masked_mean(num, den, old)
    return new, den


def upload_bytes(state: State, weights: Weights | None) -> int:
    """Bytes a fog sends the cloud: nothing if it merged no update; else, for dense
    weights, the model and one number; for per-parameter weights, a bitmap of the held
    parameters and each held one's value and weight (float32)."""
    if weights is None:
        return 0
    if not isinstance(weights, dict):
        return sum(v.nbytes for v in state.values()) + 8
    size = sum(v.size for v in state.values())
    held = sum(int((w > 0).sum()) for w in weights.values())
    return math.ceil(size / 8) + held * 8
