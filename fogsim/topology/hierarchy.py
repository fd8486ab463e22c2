"""The fog tier: devices → fog aggregators → cloud (``[topology] kind = "hierarchical"``).

Each fog is the scenario's own strategy, built for the devices it serves: it samples
its share of ``clients_per_round`` among them (seeded by the fog round, so one fog
holding every device samples exactly what the flat run samples), sends them its fog
model, classifies and accounts their replies, and aggregates on its own simulated
clock. All fogs' messages of a fog round go to Flower together, in one exchange: the
real compute runs in the same batches as a flat round of that size. After
``fog_rounds`` fog rounds each fog sends its model and its aggregation weights to the
cloud, which merges them (``fogsim.topology.merge``: exactly the flat average when
one fog holds every device).

Time, per cloud round: the global model goes down the fog→cloud link to every fog;
each fog then runs its rounds back to back (a fog round ends when its slowest device
has replied, or at ``[simulation] deadline_s``); its model goes up the link; the cloud
round ends when the last fog model has arrived (or at ``[topology] cloud_deadline_s``:
a later fog is a fog straggler and is not merged).

:class:`Hierarchy` stands where a strategy stands in the round loop: it has the
attributes the loop and the results read (``round_stats``, ``node_rows``,
``holders``, ``held_model``, evaluation, checkpoint state).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fogsim.fleet import Fleet
from fogsim.flower import cohort, wire
from fogsim.scenario import Scenario
from fogsim.strategies import build_strategy
from fogsim.strategies.base import registered_nodes
from fogsim.study.results import STATUSES
from fogsim.topology.assign import TopologyError, fog_shares, num_fogs
from fogsim.topology.merge import Weights, add, merge, upload_bytes

Send = Callable[[list[Message]], list[Message]]  # hands messages to Flower, returns replies
SUMMED = ("sampled", "aggregated", "bytes_up", "bytes_down_train") + tuple(
    s for s in STATUSES if s != "ok"
)


def fog_scenario(scenario: Scenario, clients: int) -> Scenario:
    """The scenario one fog's strategy runs: its share of the clients per round, no
    schedule of its own (cloud rounds keep ``round_interval_s``), and DynHP's planned
    participations those of the whole run (a node's expected trainings over all fog
    rounds), so a node's pruning schedule does not depend on how the fleet is split.
    Its cohorts are the flat round's size (a fog's few devices in one message, not
    about two per actor each: 20 fogs of 5 made 60 messages per fog round on two
    cores where the flat round makes 4; results do not depend on the cohort size)."""
    sc, topo = scenario, scenario.topology
    expected = sc.run.rounds * topo.fog_rounds * sc.simulation.clients_per_round / sc.fleet.nodes
    sim = sc.simulation.model_copy(
        update={
            "clients_per_round": clients,
            "cohort_size": sc.simulation.cohort(sc.simulation.clients_per_round),
            "round_interval_s": None,
            "min_replies": min(sc.simulation.min_replies, max(1, clients)),
        }
    )
    planned = sc.dynhp.participations or max(1, math.ceil(expected))
    dynhp = sc.dynhp.model_copy(update={"participations": planned})
    return sc.model_copy(update={"simulation": sim, "dynhp": dynhp})


def fog_fleet(scenario: Scenario, fleet: Fleet) -> Fleet:
    """The fleet as a fog sees it: every device reaches its fog over ``[topology]
    device_link`` (a field left out: its class's own; radio energy figures unchanged)."""
    link = scenario.topology.device_link.model_dump(exclude_none=True)
    if not link:
        return fleet
    classes = [c.model_copy(update=link) for c in fleet.classes]
    return dataclasses.replace(fleet, classes=classes)


def round_weight(strategy: Any) -> Weights:
    """The weight behind a fog's aggregate just made: per parameter for sub-model
    strategies (``merge_weights``), else the examples of the updates it averaged."""
    weights = getattr(strategy, "merge_weights", None)
    if weights is not None:
        return weights
    return float(sum(r.get("num_examples") or 0 for r in strategy.node_rows if r["status"] == "ok"))


@dataclasses.dataclass
class Fog:
    index: int
    strategy: Any  # its aggregator: a FogStrategy, or a Buffered running one
    weights: Weights | None = None  # this cloud round's, None until it aggregates
    arrays: ArrayRecord | None = None  # its model
    # this cloud round's aggregated updates by device class: lost if its model is late
    aggregated: Counter[str] = dataclasses.field(default_factory=Counter)


class Hierarchy:
    """The scenario's strategy at every fog, and the cloud merging the fogs."""

    def __init__(self, scenario: Scenario, fleet: Fleet, assignment: np.ndarray) -> None:
        self.scenario, self.fleet, self.topology = scenario, fleet, scenario.topology
        self.arch = scenario.arch  # the global model's shape, as every strategy has it
        self.fog_of = assignment
        n = num_fogs(assignment)
        if self.topology.fogs is not None and self.topology.fogs != n:
            raise TopologyError(
                f"topology.fogs: {self.topology.fogs}, but assign = "
                f"{self.topology.assign!r} gives {n}; leave it out"
            )
        self.cloud = build_strategy(scenario, fleet)  # evaluation, the cloud's clock
        sizes = np.bincount(assignment, minlength=n)
        seen = fog_fleet(scenario, fleet)
        self.fogs = [Fog(f, self.fog_driver(f, sizes, seen)) for f in range(n)]
        self.node_rows: list[dict[str, Any]] = []
        self.round_stats: dict[str, Any] = {}
        self.mailboxes: list[int] = []

    def fog_driver(self, f: int, sizes: np.ndarray, fleet: Fleet) -> Any:
        """Fog ``f``'s aggregator: the scenario's strategy with its share of the clients
        per round (in proportion to the fogs' sizes), training only its own devices."""
        total = self.scenario.simulation.clients_per_round
        clients = fog_shares(total, sizes, "simulation.clients_per_round")
        strategy = build_strategy(fog_scenario(self.scenario, int(clients[f])), fleet)
        strategy.takes_part = strategy.takes_part & (self.fog_of == f)
        return strategy

    def exchange(self, grid: Grid, messages: list[Message], send: Send) -> list[Message]:
        """All fogs' messages of a fog round to Flower in one exchange, one message per
        mailbox at a time (``server_app.arrivals``)."""
        mailboxes = self.mailboxes_of(grid)
        for k, msg in enumerate(messages):
            msg.metadata.dst_node_id = mailboxes[k % len(mailboxes)]
        return send(messages)

    def mailboxes_of(self, grid: Grid) -> list[int]:
        """The run's Flower nodes (fogs' strategies use these, not as many as their
        own clients per round would register)."""
        if not self.mailboxes:
            self.mailboxes = registered_nodes(grid, self.scenario.simulation.flower_nodes)
        return self.mailboxes

    # --- one cloud round ----------------------------------------------------------
    def train_round(
        self, grid: Grid, rnd: int, arrays: ArrayRecord, send: Send
    ) -> ArrayRecord | None:
        """``fog_rounds`` fog rounds on every fog, then the cloud's merge; None if no
        fog model arrived to merge (the global model is kept)."""
        topo, start = self.topology, self.cloud.clock.now_s
        down_s = topo.wan.seconds(wire.array_bytes(arrays), up=False)
        self.node_rows, self.round_stats = [], {"problems": [], "energy": Counter()}
        self.round_stats["failed_by_class"] = Counter()
        for fog in self.fogs:
            fog.arrays, fog.weights, fog.aggregated = arrays, None, Counter()
            fog.strategy.clock.now_s = start + down_s
        for j in range(topo.fog_rounds):
            self.fog_round(grid, (rnd - 1) * topo.fog_rounds + j + 1, rnd, j, send)
        return self.cloud_merge(rnd, arrays, start, down_s)

    def fog_round(self, grid: Grid, g: int, rnd: int, j: int, send: Send) -> None:
        """Fog round ``g`` (the ``j``-th of cloud round ``rnd``) on every fog: all their
        messages in one exchange, then each fog aggregates its own replies."""
        sent: list[Message] = []
        for fog in self.fogs:
            fog.strategy.node_ids = self.mailboxes_of(grid)
            sent += fog.strategy.configure_train(g, fog.arrays, ConfigRecord(), grid)
        if j == 0:
            up = self.fogs[0].strategy.round_stats["up_by_class"]
            self.round_stats["up_by_class"] = up  # the whole fleet's, at the round's start
        replies = self.exchange(grid, sent, send)
        for fog, mine in zip(self.fogs, self.by_fog(replies), strict=True):
            fog.strategy.merge_weights = None  # type: ignore[attr-defined]
            new, _ = fog.strategy.aggregate_train(g, mine)
            if new is not None:
                fog.arrays = new
                fog.weights = add(fog.weights, round_weight(fog.strategy))
            self.collect(fog, rnd, j)

    def by_fog(self, replies: list[Message]) -> list[list[Message]]:
        """Replies split by the fog that sent the message (an error reply names only
        the message it answers)."""
        out: list[list[Message]] = [[] for _ in self.fogs]
        asked = {m.metadata.message_id: fog.index for fog in self.fogs for m in fog.strategy.sent}
        for msg in replies:
            nodes = [] if msg.has_error() else cohort.reply_nodes(msg)
            if nodes:  # a cohort's nodes are one fog's: its strategy made the cohort
                f = int(self.fog_of[nodes[0]])
            else:
                f = asked.get(msg.metadata.reply_to_message_id)
            if f is not None:
                out[f].append(msg)
        return out

    def collect(self, fog: Fog, rnd: int, j: int) -> None:
        """A fog round's node rows (with their fog) and counts into the cloud round's."""
        stats = fog.strategy.round_stats
        for row in fog.strategy.node_rows:
            self.node_rows.append({**row, "round": rnd, "fog": fog.index, "fog_round": j + 1})
        fog.aggregated.update(r["class"] for r in fog.strategy.node_rows if r["status"] == "ok")
        for key in SUMMED:
            self.round_stats[key] = self.round_stats.get(key, 0) + stats.get(key, 0)
        self.round_stats["failed_by_class"].update(stats.get("failed_by_class", {}))
        self.round_stats["energy"].update(stats.get("energy", {}))
        self.round_stats["problems"] += [f"fog {fog.index}: {p}" for p in stats["problems"]]

    def busy_till(self, fog: Fog, rnd: int, t: float) -> None:
        """``fog``'s devices of cloud round ``rnd`` are in its rounds until ``t`` (simulated
        s), past the cloud deadline: none is sampled before then (they once were, in the
        next cloud round, while still waiting in their late fog's round). A buffered fog
        keeps its devices in flight out of sampling itself."""
        busy = getattr(fog.strategy, "busy_until", None)  # a lock-step fog's FogStrategy
        if busy is None:
            return
        for row in self.node_rows:
            if row["round"] == rnd and row["fog"] == fog.index:
                busy[row["node"]] = max(busy[row["node"]], t)

    def cloud_merge(
        self, rnd: int, arrays: ArrayRecord, start: float, down_s: float
    ) -> ArrayRecord | None:
        """Fog models up the link, merged with their weights; the round's tier columns."""
        topo, old = self.topology, {k: v.numpy() for k, v in arrays.items()}
        deadline = start + topo.cloud_deadline_s if topo.cloud_deadline_s else math.inf
        merged, up_bytes, late, end = [], 0, 0, start + down_s
        for fog in self.fogs:
            state = {k: v.numpy() for k, v in fog.arrays.items()} if fog.weights is not None else {}
            nbytes = upload_bytes(state, fog.weights)
            arrival = fog.strategy.clock.now_s + topo.wan.seconds(nbytes, up=True)
            end = max(end, min(arrival, deadline))
            if fog.strategy.clock.now_s > deadline:  # its rounds run on past the cloud's
                self.busy_till(fog, rnd, fog.strategy.clock.now_s)
            if fog.weights is None:
                continue
            up_bytes += nbytes
            if arrival > deadline:  # its updates never reach the global model
                late += 1
                self.round_stats["aggregated"] -= fog.aggregated.total()
                self.round_stats["failed_by_class"].update(fog.aggregated)
            else:
                merged.append((state, fog.weights))
        # at the deadline, the deadline itself: (start + d) - start is d give or take a bit
        round_s = topo.cloud_deadline_s if end == deadline else end - start
        self.cloud.clock.advance(round_s)
        if round_s >= (self.cloud.clock.interval_s or 0.0):  # at ``end`` exactly: fogs
            self.cloud.clock.now_s = end  # that wait for the cloud start at its time
        down_bytes = len(self.fogs) * wire.array_bytes(arrays)
        device_bytes = self.round_stats["bytes_up"] + self.round_stats["bytes_down_train"]
        self.round_stats.update(sim_clock_s=start, sim_time_s=round_s)
        self.round_stats["tiers"] = {
            "device_bytes": device_bytes,
            "cloud_bytes_up": up_bytes,
            "cloud_bytes_down": down_bytes,
            "cloud_bytes": up_bytes + down_bytes,
            "stragglers_device": self.round_stats["straggler"],
            "stragglers_fog": late,
        }
        if not merged:
            return None
        new, den = merge(old, merged)
        if any(isinstance(w, dict) for _, w in merged):
            self.round_stats["union_params"] = sum(int((d > 0).sum()) for d in den.values())
        return wire.numpy_record(new)

    # --- what the round loop and the results read --------------------------------
    @property
    def holders(self) -> dict[int, int]:
        """Node → the cloud round in which it last trained."""
        per = self.topology.fog_rounds
        out: dict[int, int] = {}
        for fog in self.fogs:
            out |= {n: (g - 1) // per + 1 for n, g in fog.strategy.holders.items()}
        return out

    def held_model(self, node: int, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.fogs[int(self.fog_of[node])].strategy.held_model(node, state)

    def energy_columns(self) -> dict[str, float]:
        self.cloud.round_stats = self.round_stats
        return self.cloud.energy_columns()

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """Client-side evaluation, sampled by the cloud over the whole fleet, each node
        sent what its fog would send it (sub-models: the fogs' neuron order and masks)."""
        cloud = self.cloud
        if hasattr(cloud, "global_state"):
            cloud.global_state = {k: v.numpy() for k, v in arrays.items()}
        if hasattr(cloud, "kept"):
            for fog in self.fogs:
                cloud.kept.update(fog.strategy.kept)
        if getattr(cloud, "order", None) is None and hasattr(self.fogs[0].strategy, "order"):
            cloud.order = self.fogs[0].strategy.order
        return list(self.cloud.configure_evaluate(server_round, arrays, config, grid))

    def aggregate_evaluate(self, server_round: int, replies: list[Message]) -> MetricRecord | None:
        return self.cloud.aggregate_evaluate(server_round, replies)

    def state_dict(self) -> dict[str, Any]:
        return {
            "cloud": self.cloud.state_dict(),
            "fogs": [f.strategy.state_dict() for f in self.fogs],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cloud.load_state_dict(state["cloud"])
        for fog, own in zip(self.fogs, state["fogs"], strict=True):
            fog.strategy.load_state_dict(own)
