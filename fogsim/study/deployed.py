"""The accuracy of the model each device really holds, per device class.

A device that has trained holds a part of the global model: the whole of it (dense
strategies), the slice it was sent (``heterofl``, ``fedrolex``) or the neurons its own
DynHP mask kept (``mask-union``); after a round it deploys those neurons with the
current global values (``FogStrategy.held_model``). That model, not a slice the server
picks, is what a device of the class ends up with, so per class we report the mean and
the *minimum* over its devices: a class whose average looks fine can still hold a
device whose model does not.

Each round a seeded sample of each class's holders is evaluated on a seeded subset of
the test split (``[simulation] device_eval_nodes`` / ``device_eval_samples``: the
curves); when the run ends every holder is evaluated on the whole test split
(``devices.csv`` and ``summary.json``: the figures to quote) and on the fleet's
validation samples (``validation_accuracy``; :func:`validation_set`), so that a
learning rate or a strategy can be chosen without looking at the test split. Devices
holding the same neurons share one evaluation.
"""

from __future__ import annotations

import hashlib
import statistics
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fogsim.device.factory import load_model
from fogsim.device.training import evaluate
from fogsim.fleet import Fleet

if TYPE_CHECKING:
    from fogsim.datasets.base import ImageData
    from fogsim.scenario import Scenario
    from fogsim.strategies.base import FogStrategy

VALIDATION_SAMPLES = 10_000  # at most this many validation samples (a seeded choice)


def validation_set(sc: Scenario, ds: ImageData) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The fleet's validation samples of ``ds`` (``DataSection.validation``: what the
    nodes hold out of their training, at most ``VALIDATION_SAMPLES``), as tensors; None
    when there are none (``client_test_fraction = 0``)."""
    index = sc.data.validation(
        ds.train_y, sc.fleet.nodes, sc.run.seed, sc.fleet.data_shares, VALIDATION_SAMPLES
    )
    return ds.tensors(ds.train_x[index], ds.train_y[index]) if len(index) else None


def _digest(weights: dict[str, np.ndarray]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(weights):
        a = np.ascontiguousarray(weights[name])
        h.update(name.encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def evaluate_held(
    strategy: FogStrategy,
    nodes: list[int],
    state: dict[str, np.ndarray],
    x: torch.Tensor,
    y: torch.Tensor,
) -> dict[int, tuple[float, float, int]]:
    """node -> (accuracy, loss, parameters) of the model it holds, on ``x, y``."""
    done: dict[str, tuple[float, float, int]] = {}
    out = {}
    for node in nodes:
        weights = strategy.held_model(node, state)
        key = "global" if weights is state else _digest(weights)
        if key not in done:
            state_t = {k: torch.as_tensor(v) for k, v in weights.items()}
            model = load_model(strategy.arch, state_t)
            acc, loss = evaluate(model, x, y)
            done[key] = (acc, loss, sum(int(np.prod(np.shape(v))) for v in weights.values()))
        out[node] = done[key]
    return out


def holders_by_class(strategy: FogStrategy, fleet: Fleet) -> dict[str, list[int]]:
    """Per device class (every class, in fleet order), its nodes that hold a model."""
    by_class: dict[str, list[int]] = {c.name: [] for c in fleet.classes}
    for node in sorted(strategy.holders):
        by_class[fleet.device(node).name].append(node)
    return by_class


def round_class_accuracy(
    strategy: FogStrategy,
    fleet: Fleet,
    state: dict[str, np.ndarray],
    x: torch.Tensor,
    y: torch.Tensor,
    nodes_per_class: int | None,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """rounds.csv fields per class: ``acc_<class>`` and ``acc_<class>_min`` (mean and
    minimum over up to ``nodes_per_class`` of its holders, a seeded sample; blank for a
    class holding nothing) and ``held_<class>`` (how many of its devices hold a model)."""
    row: dict[str, Any] = {}
    for name, holders in holders_by_class(strategy, fleet).items():
        picked = holders
        if nodes_per_class is not None and len(holders) > nodes_per_class:
            picked = sorted(rng.choice(holders, size=nodes_per_class, replace=False).tolist())
        accs = [a for a, _, _ in evaluate_held(strategy, picked, state, x, y).values()]
        row[f"acc_{name}"] = statistics.fmean(accs) if accs else ""
        row[f"acc_{name}_min"] = min(accs) if accs else ""
        row[f"held_{name}"] = len(holders)
    return row


def device_rows(
    strategy: FogStrategy,
    fleet: Fleet,
    state: dict[str, np.ndarray],
    x: torch.Tensor,
    y: torch.Tensor,
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[dict[str, Any]]:
    """devices.csv: one row per device holding a model, evaluated on ``x, y`` (the test
    split) and, if given, on ``validation`` (``validation_accuracy``)."""
    nodes = sorted(strategy.holders)
    results = evaluate_held(strategy, nodes, state, x, y)
    checked = evaluate_held(strategy, nodes, state, *validation) if validation else {}
    return [
        {
            "node": node,
            "class": fleet.device(node).name,
            "budget_bytes": fleet.budget(node),
            "last_round": strategy.holders[node],
            "params": results[node][2],
            "accuracy": results[node][0],
            "loss": results[node][1],
            **({"validation_accuracy": checked[node][0]} if checked else {}),
        }
        for node in nodes
    ]


def class_summary(rows: list[dict[str, Any]], fleet: Fleet) -> dict[str, dict[str, Any]]:
    """Per class: devices holding a model, and the mean, std and minimum of their
    accuracy (None where the class holds nothing); where the rows have it, the mean
    and minimum of their validation accuracy too (``validation_mean``, ``_min``)."""
    out = {}
    validated = bool(rows) and "validation_accuracy" in rows[0]
    for c in fleet.classes:
        mine = [r for r in rows if r["class"] == c.name]
        accs = [r["accuracy"] for r in mine]
        out[c.name] = {
            "devices": len(accs),
            "mean": statistics.fmean(accs) if accs else None,
            "std": statistics.stdev(accs) if len(accs) > 1 else None,
            "min": min(accs) if accs else None,
        }
        if validated:
            checked = [r["validation_accuracy"] for r in mine]
            out[c.name]["validation_mean"] = statistics.fmean(checked) if checked else None
            out[c.name]["validation_min"] = min(checked) if checked else None
    return out
