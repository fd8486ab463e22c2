"""What every fogsim strategy shares, on top of Flower's ``FedAvg``.

- **Fleet addressing.** Flower nodes are mailboxes, not fleet nodes. A round's sampled
  fleet nodes travel in cohorts (``[simulation] cohort_size``, ``fogsim.flower.cohort``):
  one message carries each of its nodes' payloads, as if each had a message of its
  own, and Flower registers one node per message in flight (``max_in_flight``, see
  ``SimulationSection.flower_nodes``); the ``j``-th message of a round goes to the
  ``j``-th smallest Flower node id (modulo their number), or, sent later than the
  first ``max_in_flight``, to the mailbox a reply has just freed. The client trains each
  node on that node's data under that node's budget. Clients keep no state (it
  travels in the messages, ``fogsim.flower.wire``), so any mailbox will do, and a
  fleet of 10,000 nodes costs Flower no more than the messages of a round.
- **Seeded sampling.** Each round draws which nodes are up (class ``availability``) and
  which of those are sampled from a generator seeded by (seed, round), so any round can
  be replayed (Flower's ``sample_nodes`` uses the unseeded module ``random``).
- **Replies** are taken in by :class:`~fogsim.strategies.intake.ReplyIntake` (the
  receiving half: statuses, accounting, absorption in node order): see its module.
- **Time.** Rounds run on a simulated clock (``fogsim.clock``): nodes are sampled
  among those whose availability window covers the round's start.

A strategy subclasses :class:`FogStrategy` (or ``SubModelStrategy``) and implements its
abstract hooks; its own parameters are typed keyword arguments of ``__init__``,
documented in its class docstring and set by ``[strategy] params``.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fogsim.clock import RoundClock
from fogsim.device.memory import need, widest_fraction
from fogsim.fleet import Fleet
from fogsim.flower import cohort, wire
from fogsim.hardware.energy import Timeline
from fogsim.scenario import Scenario
from fogsim.strategies.intake import ReplyIntake, RoundReplies

REGISTRATION_WAIT_S = 120  # real seconds for Flower to register its nodes (mailboxes)
MAX_WAITS = 1000  # window openings tried in search of a node on (low battery keeps one off)


class FogStrategy(ReplyIntake, FedAvg):
    """A Flower strategy over a fleet: seeded sampling of fleet nodes, their payloads
    in cohort messages, each node's reply classified and accounted. Subclasses say
    what each node gets (:meth:`node_payload`), how good replies merge
    (:meth:`aggregate`) and which part of the global model a node holds once it has
    trained (:meth:`held_model`)."""

    name = "base"
    mode = "plain"  # how its clients train: "dense", "plain" or "dynhp" (wire.MODES)

    def __new__(cls, *args: Any, **kwargs: Any) -> FogStrategy:
        """Refuse, pointing to the right class, a Flower-style construction without a
        scenario: the simulator's strategies need one; ``fogsim.flower.strategies`` has
        the Flower-app ones. (No arguments at all is left to ``copy`` and ``pickle``.)"""
        if (args and not isinstance(args[0], Scenario)) or (kwargs and not args):
            raise TypeError(
                f"{cls.__name__} here is fogsim's simulator strategy, built from a scenario "
                "and a fleet; in a Flower app of your own use fogsim.flower.strategies "
                "(MaskUnion, HeteroFL, FedRolex), which take Flower's keyword arguments"
            )
        return super().__new__(cls)

    def __init__(self, scenario: Scenario, fleet: Fleet, *, dynhp: bool | None = None) -> None:
        """``dynhp``: whether its clients hold DynHP's arrays beside training (default:
        those that run DynHP; a subclass whose params decide says so here, before
        anything is sized beside them)."""
        super().__init__(min_train_nodes=1, min_evaluate_nodes=0, min_available_nodes=1)
        self.scenario = scenario
        self.fleet = fleet
        self.spec = wire.ClientSpec.of(scenario).model_dump_json()  # sent with every message
        self.node_ids: list[int] = []
        self.bytes_down: dict[int, int] = {}
        self.arch = scenario.arch
        self.optimizer = scenario.train.memory_kind
        self.min_batch = scenario.dynhp.min_batch
        self.dynhp = self.mode == "dynhp" if dynhp is None else dynhp
        self.takes_part = np.ones(fleet.num_nodes, dtype=bool)  # nodes this strategy trains
        self.sent: list[Message] = []  # this round's training messages (cohorts of nodes)
        self.tally = RoundReplies({}, {})  # what the replies to them have said so far
        self.accepted: list[Message] = []  # good updates kept for aggregate()
        self.node_rows: list[dict[str, Any]] = []
        self.round_stats: dict[str, Any] = {}
        self.holders: dict[int, int] = {}  # node -> last round it trained (holds a model)
        sim = scenario.simulation
        self.clock = RoundClock(sim.round_interval_s, now_s=sim.start_h * 3600.0)
        self.timelines: dict[int, Timeline] = {}  # this round's, per node that replied
        self.up_by_class = np.zeros(len(fleet.classes), dtype=int)  # nodes on, this round
        # simulated s until which a straggler still works on its late update (it was
        # once sampled again while busy: its time and energy counted twice)
        self.busy_until = np.zeros(fleet.num_nodes)

    @classmethod
    def holds_dynhp_arrays(cls, params: dict[str, Any]) -> bool:
        """Whether, with ``[strategy] params``, this strategy's clients hold DynHP's
        arrays beside training (``memory.dynhp_bytes``): those that run DynHP."""
        return cls.mode == "dynhp"

    # --- the hooks -------------------------------------------------------------
    @abstractmethod
    def node_payload(
        self, node: int, arrays: ArrayRecord, server_round: int
    ) -> tuple[dict[str, ArrayRecord], dict[str, Any]]:
        """(records, extra config) sent to ``node``; ``records["arrays"]`` is its model."""

    @abstractmethod
    def aggregate(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Merge good replies (sorted by node) into the new global model."""

    @abstractmethod
    def held_model(self, node: int, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model ``node`` holds, given global weights ``state``: the part of the
        global model it trained at its last participation (a node in :attr:`holders`),
        with the current global values. This is what the device deploys."""

    def on_reply(self, node: int, msg: Message, straggler: bool) -> None:
        """Remember per-node state from a reply that trained (before aggregation); a
        straggler's update is not averaged, but it did train on its device."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs besides the global model (picklable); strategies
        that remember more per-node state extend this and :meth:`load_state_dict`."""
        busy = np.flatnonzero(self.busy_until > self.clock.now_s)
        busy_until = {int(n): float(self.busy_until[n]) for n in busy}
        return {"holders": self.holders, "clock_s": self.clock.now_s, "busy_until": busy_until}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (called before the first resumed round)."""
        self.holders = state.get("holders", {})
        self.clock.now_s = state.get("clock_s", self.clock.now_s)
        for node, until in state.get("busy_until", {}).items():
            self.busy_until[node] = until

    # --- sampling and messages -------------------------------------------------
    def sample(self, k: int, grid: Grid, server_round: int, stream: int = 0) -> list[int]:
        """Up to ``k`` distinct available fleet nodes, seeded by (seed, round, stream)."""
        if not self.node_ids:
            self.node_ids = registered_nodes(grid, self.scenario.simulation.flower_nodes)
        up, rng = self.candidates(server_round, stream)
        waits = 0
        while stream == 0 and not self.takes_part[up].any() and waits < MAX_WAITS:
            # nobody is on: the round starts when the first window opens
            t = self.fleet.availability.next_open(self.clock.now_s, np.flatnonzero(self.takes_part))
            if not np.isfinite(t):
                break
            self.clock.wait_until(t)
            up, rng, waits = *self.candidates(server_round, stream), waits + 1
        if stream == 0:  # training: only nodes the strategy lets take part, and not busy
            self.up_by_class = np.bincount(
                self.fleet.node_class[up], minlength=len(self.fleet.classes)
            )
            up = up[self.takes_part[up] & (self.busy_until[up] <= self.clock.now_s)]
        return sorted(int(n) for n in rng.choice(up, size=min(k, len(up)), replace=False))

    def candidates(self, server_round: int, stream: int) -> tuple[np.ndarray, np.random.Generator]:
        """Nodes up at the round's start on the clock, and the round's generator to
        sample them with (seeded by (seed, round, stream))."""
        rng = np.random.default_rng([self.scenario.run.seed, server_round, stream])
        return self.fleet.available(rng, self.clock.now_s), rng

    def _messages(
        self,
        nodes: list[int],
        arrays: ArrayRecord,
        config: ConfigRecord,
        kind: str,
        server_round: int,
    ) -> list[Message]:
        """The round's messages to ``nodes``: cohorts of ``[simulation] cohort_size``
        (``fogsim.flower.cohort``), each node's payload as if it had its own message;
        bytes down are counted per node, the shared model once for each node."""
        size, down = self.scenario.simulation.cohort(len(nodes)), 0
        shared = ConfigRecord({**config, wire.SPEC: self.spec})
        messages = []
        for j, start in enumerate(range(0, len(nodes), size)):
            cohort_nodes, payloads = nodes[start : start + size], []
            for node in cohort_nodes:
                records, extra = self.node_payload(node, arrays, server_round)
                self.bytes_down[node] = wire.model_bytes(records)
                down += self.bytes_down[node]
                own = {
                    **extra,
                    wire.NODE: node,
                    wire.CLASS: self.fleet.device(node).name,
                    wire.BUDGET: self.fleet.budget(node),
                }
                if config.get(wire.SUM):  # the client decides what it sums as we would
                    own |= self.window(node).config()
                payloads.append({**records, wire.CONFIG: ConfigRecord(own)})
            content = cohort.pack(cohort_nodes, payloads, shared, arrays)
            mailbox = self.node_ids[j % len(self.node_ids)]
            messages.append(Message(content, dst_node_id=mailbox, message_type=kind))
        self.round_stats[f"bytes_down_{kind}"] = down
        return messages

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self.sample(self.scenario.simulation.clients_per_round, grid, server_round)
        up = dict(zip((c.name for c in self.fleet.classes), self.up_by_class.tolist(), strict=True))
        self.node_rows, self.round_stats = [], {"sampled": len(nodes), "up_by_class": up}
        self.timelines = {}
        config[wire.ROUND] = server_round
        self.sent = self._messages(nodes, arrays, config, MessageType.TRAIN, server_round)
        return self.sent

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        k = self.scenario.simulation.evaluate_clients
        if k == 0:
            return []
        config[wire.ROUND] = server_round
        nodes = self.sample(k, grid, server_round, stream=1)
        return self._messages(nodes, arrays, config, MessageType.EVALUATE, server_round)

    # --- partial aggregation (a strategy whose aggregate is a sum overrides these) --
    def begin_aggregate(self) -> None:
        """Start a round's aggregate: :meth:`absorb` then takes its good updates one by
        one and :meth:`merged` gives the result. By default the updates are kept and
        :meth:`aggregate` merges them at the end; a strategy whose aggregate is a sum
        adds each into running sums instead, so no update is held past its absorption."""
        self.accepted: list[Message] = []

    def absorb(self, server_round: int, msg: Message) -> None:
        """Take one good update into the round's aggregate (in fleet node order)."""
        self.accepted.append(msg)

    def merged(self, server_round: int) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The round's aggregate of every update absorbed."""
        accepted, self.accepted = self.accepted, []
        return self.aggregate(server_round, accepted)

    # --- budgets -----------------------------------------------------------------
    def width_fraction(
        self, node: int, batch: int | None = None, dynhp: bool | None = None
    ) -> float:
        """Width fraction of the global model fleet node ``node`` trains at ``batch``
        (default: the minimum batch), holding DynHP's arrays or not (default: as every
        node of this strategy does, :attr:`dynhp`); on demand: a bisection per distinct
        budget, cached."""
        budget, batch = self.fleet.budget(node), batch or self.min_batch
        dynhp = self.dynhp if dynhp is None else dynhp
        return widest_fraction(self.arch, budget, self.optimizer, batch, dynhp)

    def budget_for(self, fraction: float) -> int:
        """Bytes that train width ``fraction`` at the minimum batch: every budget at or
        above it trains at least that much (a vectorised test over the whole fleet,
        where :meth:`width_fraction` per node would run a bisection per node)."""
        return need(self.arch.scaled(fraction), self.min_batch, self.optimizer, self.dynhp)


def registered_nodes(grid: Grid, expected: int) -> list[int]:
    """Flower's registered nodes (fogsim's mailboxes), all ``expected`` of them: Flower's
    simulation engine registers them in its own thread while the ServerApp may already
    run (on a loaded machine a first round saw 0 or 1 of 4), so this waits up to
    :data:`REGISTRATION_WAIT_S` for them."""
    give_up = time.monotonic() + REGISTRATION_WAIT_S
    while len(ids := grid.get_node_ids()) < expected and time.monotonic() < give_up:
        time.sleep(0.05)
    if len(ids) != expected:
        raise RuntimeError(
            f"Flower registered {len(ids)} nodes in {REGISTRATION_WAIT_S} s, expected {expected}"
        )
    return sorted(ids)
