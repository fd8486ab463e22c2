"""The message contract between fogsim's ServerApp (strategies) and ClientApp.

Every name that crosses the wire is defined here once, with what it holds, and both
sides pack and unpack through these helpers; nothing else spells a key.

A training message (server → client) is a ``RecordDict`` of:

- ``arrays`` (:data:`ARRAYS`): the global model;
- ``kept`` (:data:`KEPT`, sub-model strategies): global neuron indices per group of
  the neurons the node holds (``fogsim.device.pruning``). The client slices its
  sub-model out of the global model itself (:func:`received_state`), so a cohort
  message carries the global model once, not one sub-model per node; bytes on the
  wire are still counted per node as the sub-model it would be sent alone
  (:func:`model_bytes`), which is what a real device downloads;
- ``dynhp`` (:data:`DYNHP`, ``mask-union``): the node's DynHP state from its last
  participation (scores, gate streaks, seen flags, in global indices);
- ``config`` (:data:`CONFIG`): the keys ``NODE`` … ``SPEC`` below, and the
  sub-model strategies' training care (``SCALER``, ``CLIP``, ``LABEL_MASK``), and
  whatever a Flower strategy run as a plug-in puts in its config (``PROXIMAL_MU``
  from ``FedProx`` is applied; other keys are ignored).

The reply (client → server) holds ``metrics`` (:data:`METRICS`, keys below; their
names with ``-`` → ``_`` are the columns of ``nodes.csv``) and, unless the node
dropped out or refused, ``arrays`` (the trained weights), ``kept`` and ``dynhp`` (if
its DynHP prunes: :data:`PRUNES`),
and ``labels`` (:data:`LABELS`: the node's training examples per label) when the
message asked for ``LABEL_MASK``; a
refusal adds ``error`` (:data:`ERROR`, ``reason``). A message that asks for
:data:`SUM` (with each node's :data:`CLOCK`, :data:`BYTES_DOWN` and the round's
:data:`DEADLINE`) may get its cohort's good updates back summed in one
:data:`PARTIAL` record, the nodes' ``arrays`` replaced by their :data:`BYTES_UP` and
:data:`FINITE` metrics (``fogsim.flower.partial``). Clients keep no state: what a node
must remember between rounds comes back in its reply and goes out with its next
message, so any Flower node can serve any fleet node.

Everything the client needs from the scenario travels as :class:`ClientSpec` (one
JSON string under ``SPEC``, validated once per worker process): the client app is
referenced by name (``clients.fog_client:app``) and closes over nothing.
"""

from __future__ import annotations

import functools
import math
from io import BytesIO
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.common.constant import SType
from pydantic import BaseModel, ConfigDict

from fogsim.device.arch import Arch
from fogsim.device.dynhp import DynHPConfig
from fogsim.device.factory import FactoryArch
from fogsim.device.pruning import Kept, extract_submodel, submodel_shapes
from fogsim.scenario import DataSection, FaultsSection, ModelSection, Scenario, TrainSection

# records of a message's RecordDict
ARRAYS = "arrays"
KEPT = "kept"
DYNHP = "dynhp"
CONFIG = "config"
METRICS = "metrics"
ERROR = "error"
LABELS = "labels"  # reply: {"labels": int64 examples per label} (label-masking strategies)
PARTIAL = "partial"  # reply: a cohort's good updates summed (fogsim.flower.partial)
PARTIAL_NODES = "partial-nodes"  # reply: {"partial-nodes": the fleet nodes in that sum}

# config keys (server → client)
NODE = "node"  # the fleet node this message is for
CLASS = "class"  # its device class (selects its fault rates)
BUDGET = "budget"  # its memory budget, bytes
MODE = "mode"  # "dense" (train regardless of budget), "plain" (fixed sub-model), "dynhp"
ROUND = "server-round"
TARGET = "target-compression"  # dynhp: this device's target compression
PROGRESS_START, PROGRESS_END = "progress-start", "progress-end"  # dynhp: its schedule span
MIN_BATCH = "min-batch"  # dynhp (optional): the batch its first sub-model trains at
ORDER = "order"  # dynhp (optional): per group, a score per neuron to prune by (low first)
PRUNES = "prunes"  # dynhp (optional, default 1): 0: at its target already, DynHP holds no
# scores and prunes nothing (no ``dynhp`` record in the reply)
SPEC = "spec"  # ClientSpec as JSON
# sub-model training care (absent = off)
SCALER = "scaler"  # 1: scale hidden outputs by global / local width in training (HeteroFL)
CLIP = "clip-grad"  # > 0: clip the gradient norm to this each step
LABEL_MASK = "label-mask"  # 1: mask the logits of labels absent locally, reply LABELS
BATCH_LR = "batch-lr"  # 1 (fixed sub-models): scale the LR with the batch as DynHP does
PROXIMAL_MU = "proximal-mu"  # > 0: FedProx's proximal term (Flower's FedProx sets it)
SUM = "sum-updates"  # 1: sum the cohort's good updates on the client (fogsim.flower.partial)
# with SUM, what decides a node's fate on the clock (fogsim.flower.verdict.Window)
CLOCK = "clock"  # [flops, up Mbit/s, down Mbit/s, latency ms, round start s, window end s]
BYTES_DOWN = "bytes-down"
DEADLINE = "deadline-s"

MODES = ("dense", "plain", "dynhp")

# metric keys (client → server)
NUM_EXAMPLES = "num-examples"  # training samples: the averaging weight
TRAIN_LOSS = "train-loss"
BATCH_SIZE = "batch-size"  # the largest batch used this round
PEAK_MEMORY = "peak-memory"  # modelled training peak, bytes
PRUNED = "pruned"  # neurons removed this round
PARAMS = "params"  # parameters held after training
OVER_BUDGET = "over-budget"  # 1: trained over budget (dense) or refused to
NEEDED_MEMORY = "needed-memory"  # a refusal: bytes batch 1 would need
TRAIN_FLOPS = "train-flops"
TIME_S = "time-s"  # real seconds on the client
DROPPED_OUT = "dropped-out"  # 1: the node went offline (no update)
BYTES_UP = "bytes-up"  # the weights' bytes, when they were summed on the client (SUM)
FINITE = "finite"  # 1: those weights were finite (SUM)
ACCURACY, LOSS = "accuracy", "loss"  # evaluation replies

DYNHP_STATE = ("score", "streak", "seen")  # per-group arrays of DynHP's state


class ClientSpec(BaseModel):
    """What every client needs from the scenario, as the scenario's own sections."""

    model_config = ConfigDict(frozen=True)

    seed: int
    nodes: int  # fleet size: the data are partitioned over all nodes
    data: DataSection
    model: ModelSection
    train: TrainSection
    dynhp: DynHPConfig
    faults: FaultsSection
    threads: int  # torch intra-op threads of a client actor
    shares: tuple[float, ...] | None = None  # per node: its relative share of the data

    @property
    def arch(self) -> Arch | FactoryArch:
        """The dense global architecture on the data set's images (``Scenario.arch``)."""
        return self.model.shape_for(self.data)

    @classmethod
    def of(cls, sc: Scenario) -> ClientSpec:
        return cls(
            seed=sc.run.seed,
            nodes=sc.fleet.nodes,
            data=sc.data,
            model=sc.model,
            train=sc.train,
            dynhp=sc.dynhp.device_config(),
            faults=sc.faults,
            threads=sc.simulation.torch_threads,
            shares=sc.fleet.data_shares,
        )


@functools.lru_cache(maxsize=8)
def client_spec(text: str) -> ClientSpec:
    """The spec a message carries, parsed and validated once per process."""
    return ClientSpec.model_validate_json(text)


def spec_of(content: RecordDict) -> ClientSpec:
    """The spec in a node's message content."""
    return client_spec(str(content[CONFIG][SPEC]))


def npy_array(array: np.ndarray) -> Array:
    """The Flower ``Array`` that ``Array(array)`` makes, byte for byte (the ``.npy``
    file of ``array``), built with one copy of the data. Flower's own ``np.save`` into
    a ``BytesIO`` and its ``getvalue()`` take two, with the buffer's growth on top: a
    client's reply then peaked at ~3x its model, over the budget its training kept to
    (by the heap, a plain-SGD HeteroFL sensor at 1.35x its 512 KiB)."""
    array = np.asarray(array, order="C")
    header = BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    data = b"".join((header.getvalue(), memoryview(array.reshape(-1).view(np.uint8))))
    return Array(dtype=str(array.dtype), shape=array.shape, stype=SType.NUMPY, data=data)


def numpy_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord of named numpy arrays (any dtype; bool and int64 included; a 0-D
    array, a batch norm's ``num_batches_tracked``, stays 0-D: ``ascontiguousarray``
    would make it 1-D, and the next round's shapes would not match)."""
    return ArrayRecord({k: npy_array(v) for k, v in arrays.items()})


def model_record(model: torch.nn.Module) -> ArrayRecord:
    """A model's weights as an ArrayRecord (what ``ArrayRecord(model.state_dict())``
    holds), with one copy of each array (:func:`npy_array`)."""
    return numpy_record({k: t.detach().numpy() for k, t in model.state_dict().items()})


def to_numpy(array: Array) -> np.ndarray:
    """A read-only numpy view of a Flower ``Array``, without copying or parsing.

    Flower stores a numpy array as the bytes of an ``.npy`` file; ``Array.numpy()``
    reads them back with ``np.load``, whose header parse (``ast.literal_eval``) cost
    1.6 ms an array: measured, more than half the server's time per round at 100
    clients of mask-union, where every reply is read twice (finite check, then the
    average). The dtype and shape are already in the ``Array``; the data start after
    the header, whose length the header's first bytes give. Anything but a C-ordered
    numpy array goes through ``Array.numpy()``."""
    data = memoryview(array.data)
    if array.stype != "numpy.ndarray" or bytes(data[:6]) != b"\x93NUMPY":
        return array.numpy()
    size = 2 if data[6] == 1 else 4  # header length field: 2 bytes in format 1.0, else 4
    start = 8 + size + int.from_bytes(data[8 : 8 + size], "little")
    if b"'fortran_order': True" in bytes(data[8 + size : start]):
        return array.numpy()
    return np.frombuffer(data, np.dtype(array.dtype), offset=start).reshape(array.shape)


def array_bytes(arrays: ArrayRecord) -> int:
    """Payload bytes of an ArrayRecord (the tensors' data, without framing), from each
    array's dtype and shape: deserialising them just to count would cost more than
    the round's aggregation."""
    return sum(np.dtype(a.dtype).itemsize * math.prod(a.shape) for a in arrays.values())


def model_bytes(records: dict[str, ArrayRecord]) -> int:
    """Bytes of the model a node's message gives it, as if sent alone: with ``kept``,
    only those neurons of the global ``arrays`` (the client slices them itself)."""
    arrays = records[ARRAYS]
    if KEPT not in records:
        return array_bytes(arrays)
    shapes = submodel_shapes({k: a.shape for k, a in arrays.items()}, unpack_kept(records[KEPT]))
    return sum(np.dtype(arrays[k].dtype).itemsize * math.prod(s) for k, s in shapes.items())


def received_state(content: RecordDict) -> dict[str, torch.Tensor]:
    """The state dict of the model a node's message gives it: the neurons in ``kept``
    of the global ``arrays`` (sub-model strategies), or all of it. The tensors are
    the node's own (never views of the message, which the cohort's other nodes share)."""
    if KEPT not in content:
        return content[ARRAYS].to_torch_state_dict()
    state = {k: to_numpy(a) for k, a in content[ARRAYS].items()}
    return extract_submodel(state, unpack_kept(content[KEPT]))


def pack_groups(arrays: list[np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Per-group arrays as ``{"<prefix>.<group>": array}`` (ArrayRecord keys)."""
    return {f"{prefix}.{g}": np.asarray(a) for g, a in enumerate(arrays)}


def unpack_groups(record: ArrayRecord, prefix: str) -> list[np.ndarray]:
    n = sum(1 for k in record if k.startswith(prefix + "."))
    return [to_numpy(record[f"{prefix}.{g}"]).copy() for g in range(n)]  # small; writable


def pack_kept(kept: Kept) -> ArrayRecord:
    return numpy_record(pack_groups([np.asarray(k, dtype=np.int64) for k in kept], KEPT))


def unpack_kept(record: ArrayRecord) -> Kept:
    return [k.astype(np.int64) for k in unpack_groups(record, KEPT)]


def pack_dynhp_state(state: dict[str, list[np.ndarray]]) -> ArrayRecord:
    """DynHP's per-group state (:data:`DYNHP_STATE`) as one ArrayRecord."""
    return numpy_record(
        {k: v for name in DYNHP_STATE for k, v in pack_groups(state[name], name).items()}
    )


def unpack_dynhp_state(record: ArrayRecord) -> dict[str, list[np.ndarray]]:
    return {name: unpack_groups(record, name) for name in DYNHP_STATE}


def pack_labels(counts: np.ndarray) -> ArrayRecord:
    return numpy_record({LABELS: np.asarray(counts, dtype=np.int64)})


def unpack_labels(record: ArrayRecord) -> np.ndarray:
    return to_numpy(record[LABELS]).astype(np.int64)


def reply(metrics: dict[str, Any], records: dict[str, Any] | None = None) -> RecordDict:
    """A node's reply content: its metrics and any records."""
    return RecordDict({METRICS: MetricRecord(metrics), **(records or {})})
