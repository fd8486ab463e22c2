"""Cohort messages: several fleet nodes in one Flower message, each as if alone.

A Flower message costs about the same whatever it holds (serialisation, an actor
dispatch, the engine's bookkeeping: ~15-20 ms on 2 cores), while a small device's
round of training may take 5 ms. So a round's sampled nodes travel in cohorts
(``[simulation] cohort_size``): one message carries the records of each of its nodes
under that node's prefix (``"<node>/<record>"``), and records that are the same for
all of them (the client spec, the round, the global model when every node gets it
whole) once. The client takes the message apart into one :class:`RecordDict` per
node, exactly what that node's own message would have held, handles them one after
another and replies with every node's records under its prefix; a node whose handling
raised gets ``"<node>/crash"`` (the reason) instead, and the others are unharmed.

On the server each node's part of the reply becomes a :class:`Message` of its own
(:func:`replies_of`; where the client summed the cohort's good updates, a record
outside every node's prefix holds the sum, ``fogsim.flower.partial``), so strategies
see one reply per fleet node, as before, and
everything users see (metrics, statuses, bytes, simulated time, energy) is still per
fleet node. Training and evaluation are seeded per (seed, round, node), so results do
not depend on the cohort size (a test compares sizes 1 and 3 per strategy).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fogsim.flower import wire

COHORT = "cohort"  # shared config: the fleet nodes of the message, in order
CRASH = "crash"  # reply: {"reason": ...} of a node whose handling raised
SEP = "/"


def key(node: int, record: str) -> str:
    return f"{node}{SEP}{record}"


def pack(
    nodes: list[int],
    payloads: list[dict[str, ArrayRecord | ConfigRecord]],
    shared_config: ConfigRecord,
    shared_arrays: ArrayRecord | None = None,
) -> RecordDict:
    """One message's content for ``nodes`` (``payloads[i]``: node ``i``'s records,
    its own config included). A node's ``arrays`` that *is* ``shared_arrays`` (the
    same object) is sent once, unprefixed, for all."""
    content = RecordDict({wire.CONFIG: ConfigRecord({**shared_config, COHORT: nodes})})
    if shared_arrays is not None:
        content[wire.ARRAYS] = shared_arrays
    for node, records in zip(nodes, payloads, strict=True):
        for name, record in records.items():
            if not (name == wire.ARRAYS and record is shared_arrays):
                content[key(node, name)] = record
    return content


def unpack(content: RecordDict) -> Iterator[tuple[int, RecordDict]]:
    """Each node of a cohort message with the content its own message would have had:
    its records, the shared arrays unless it has its own, and the shared config
    merged under its own."""
    shared = content[wire.CONFIG]
    common = {k: v for k, v in shared.items() if k != COHORT}
    for node in shared[COHORT]:
        prefix = key(node, "")
        own = {k[len(prefix) :]: v for k, v in content.items() if k.startswith(prefix)}
        if wire.ARRAYS not in own and wire.ARRAYS in content:
            own[wire.ARRAYS] = content[wire.ARRAYS]
        own[wire.CONFIG] = ConfigRecord({**common, **own.get(wire.CONFIG, {})})
        yield int(node), RecordDict(own)


def handle(content: RecordDict, one: Callable[[RecordDict], RecordDict]) -> RecordDict:
    """The reply content to a cohort message: ``one(node_content)`` for each node,
    under the node's prefix; a node for which ``one`` raised gets only its ``crash``
    record: the exception and where it was raised, which the server reports as that
    node's error, as Flower would have for a message of its own."""
    out = RecordDict()
    for node, node_content in unpack(content):
        try:
            records = one(node_content)
        except Exception as e:  # noqa: BLE001 - one node's crash is its own, not the cohort's
            out[key(node, CRASH)] = ConfigRecord({"reason": crash_reason(e)})
            continue
        for name, record in records.items():
            out[key(node, name)] = record
    return out


def crash_reason(e: BaseException) -> str:
    """``Type: message (file:line of the raise)``: enough to find a real bug from the
    results, since a node's crash no longer reaches Flower's error log."""
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" ({Path(where.filename).name}:{where.lineno})" if where else ""
    return f"{type(e).__name__}: {e}{at}"


def nodes_of(msg: Message) -> list[int]:
    """The fleet nodes a cohort message (one the server sends) is for."""
    return [int(n) for n in msg.content[wire.CONFIG][COHORT]]


def reply_nodes(reply: Message) -> list[int]:
    """The fleet nodes a (non-error) cohort reply has records for."""
    return sorted({int(name.partition(SEP)[0]) for name in reply.content if SEP in name})


def parts(content: RecordDict) -> dict[int, dict[str, Any]]:
    """A cohort reply's records by fleet node (``"<node>/<record>"`` names), in one pass;
    records of no node (a cohort's sum, ``fogsim.flower.partial``) are not in it."""
    out: dict[int, dict[str, Any]] = {}
    for name, record in content.items():
        node, sep, rest = name.partition(SEP)
        if sep:
            out.setdefault(int(node), {})[rest] = record
    return out


def replies_of(reply: Message) -> tuple[dict[int, Message], dict[int, str]]:
    """A cohort reply taken apart: ({node: its reply as a Message of its own},
    {node: crash reason}). Nodes are read from the record names, so a node missing
    from the reply is simply absent (the caller counts it as never answered)."""
    good, crashed = {}, {}
    for node, records in sorted(parts(reply.content).items()):
        if CRASH in records:
            crashed[node] = str(records[CRASH]["reason"])  # type: ignore[index]
        else:
            kind = reply.metadata.message_type
            good[node] = Message(RecordDict(records), dst_node_id=0, message_type=kind)
    return good, crashed
