"""The split over fleet nodes done by a Flower Datasets partitioner (``flwr-datasets``).

``[data] partitioning = "flower"`` with ``partitioner = "DirichletPartitioner"`` (any
class of ``flwr_datasets.partitioner``, or ``"module:Class"`` for a subclass of your
own) and ``partitioner_params = {alpha = 0.3}`` splits the training set with that
partitioner, so a Flower user's partitioning (IID, Dirichlet, shards, pathological,
linear / square / exponential sizes, inner Dirichlet, ...) means the same in fogsim.

fogsim fills in what the fleet decides, unless ``partitioner_params`` sets it:
``num_partitions`` (``fleet.nodes``; setting it is an error), ``partition_by =
"label"`` and ``seed`` (the run's seed). A partitioner reads a Hugging Face
``Dataset``; fogsim hands it one of two columns, ``label`` and the sample's index,
in an order shuffled with the run's seed, as ``flwr_datasets.FederatedDataset`` shuffles
by default (``IidPartitioner`` cuts contiguous shards, which on the stored order would
give each node a few classes). Images never go through ``datasets``: a node's partition
stays an index array into the data in memory.

fogsim's own ``iid``, ``dirichlet`` and ``shards`` (``fogsim.data.partition``) stay,
for what these partitioners lack: node weights (``fleet.data_shares``, a device
class's share of the data), and every published fogsim result was measured with them.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

FILLED = ("num_partitions", "partition_by", "seed")  # what fogsim sets unless told
MODULE = "flwr_datasets.partitioner"


class PartitionerError(ValueError):
    """The partitioner cannot be built or cannot split this data set."""


@functools.lru_cache(maxsize=8)
def resolve(ref: str) -> type:
    """The partitioner class named by ``ref``: a class of ``flwr_datasets.partitioner``
    (``"DirichletPartitioner"``) or ``"module:Class"``."""
    from flwr_datasets.partitioner import Partitioner

    module, _, name = ref.rpartition(":") if ":" in ref else (MODULE, ":", ref)
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise PartitionerError(
            f"partitioner = {ref!r}: {e}; allowed: {', '.join(known())} or 'module:Class'"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Partitioner)):
        raise PartitionerError(f"partitioner = {ref!r} is not a flwr_datasets Partitioner")
    return cls


def known() -> list[str]:
    """The row partitioners of ``flwr_datasets.partitioner`` (not the vertical ones,
    which split columns, not samples)."""
    module = importlib.import_module(MODULE)
    return sorted(
        n
        for n in dir(module)
        if n.endswith("Partitioner") and n != "Partitioner" and not n.startswith("Vertical")
    )


def problems(ref: str, params: Mapping[str, Any]) -> list[str]:
    """Why ``ref`` with ``params`` cannot be built (none: it can), from its signature:
    unknown names, ``num_partitions`` given, required arguments missing."""
    try:
        cls = resolve(ref)
    except PartitionerError as e:
        return [str(e)]
    signature = inspect.signature(cls.__init__)
    names = [n for n in signature.parameters if n != "self"]
    if "num_partitions" in params:
        return ["partitioner_params.num_partitions: set by fleet.nodes, leave it out"]
    if unknown := sorted(set(params) - set(names)):
        return [
            f"partitioner_params: {cls.__name__} takes no {', '.join(unknown)}; "
            f"it takes {', '.join(names)}"
        ]
    missing = [
        n
        for n, p in signature.parameters.items()
        if n not in ("self", *FILLED) and p.default is p.empty and n not in params
    ]
    if missing:
        return [f"partitioner_params: {cls.__name__} needs {', '.join(missing)}"]
    return []


def flower_partition(
    labels: np.ndarray, num_nodes: int, ref: str, params: Mapping[str, Any], seed: int
) -> list[np.ndarray]:
    """Every node's sorted sample indices, as partitioner ``ref`` splits a data set of
    ``labels`` (the module doc says what fogsim fills in). A partition may overlap
    another or leave samples out, as the partitioner decides; an empty one, or a count
    of partitions other than ``num_nodes``, is a :class:`PartitionerError`."""
    from datasets import Dataset

    cls = resolve(ref)
    taken = set(inspect.signature(cls.__init__).parameters)
    filled = {"num_partitions": num_nodes, "partition_by": "label", "seed": seed}
    kwargs = {k: v for k, v in filled.items() if k in taken} | dict(params)
    order = np.random.default_rng(seed).permutation(len(labels))
    table = Dataset.from_dict({"label": labels[order], "index": order})
    # a partitioner's warnings while it retries (DirichletPartitioner: one per attempt at
    # min_partition_size) are said again only if it succeeds, the last from each place
    # it warns from: if it fails, the error says why
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        try:
            partitioner = cls(**kwargs)
            partitioner.dataset = table
            count = partitioner.num_partitions
            if count != num_nodes:
                raise PartitionerError(
                    f"{cls.__name__} makes {count} partitions for fleet.nodes = {num_nodes}"
                )
            parts = [
                np.sort(partitioner.load_partition(i).with_format("numpy")[:]["index"])
                for i in range(num_nodes)
            ]
        except PartitionerError:
            raise
        except (ValueError, TypeError, KeyError, IndexError) as e:
            why = (  # IidPartitioner says only "Index 3000 out of range"
                f" (fleet.nodes = {num_nodes} exceeds the {len(labels)} training samples)"
                if num_nodes > len(labels)
                else ""
            )
            raise PartitionerError(f"{cls.__name__}({_shown(kwargs)}): {e}{why}") from None
    last = {(w.category, w.filename, w.lineno): w for w in said}
    for w in last.values():
        warnings.warn(w.message, w.category, stacklevel=2)
    if empty := [i for i, p in enumerate(parts) if len(p) == 0]:
        raise PartitionerError(
            f"{cls.__name__}({_shown(kwargs)}) leaves {len(empty)} of {num_nodes} nodes "
            f"without samples (node {empty[0]} first); every node needs at least one"
        )
    return [p.astype(np.int64) for p in parts]


def _shown(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
