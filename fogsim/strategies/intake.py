"""What a round's replies say: each sampled node's status, its nodes.csv row and
energy, and the good updates absorbed into the strategy's aggregate.

The receiving half of :class:`~fogsim.strategies.base.FogStrategy` (which inherits
:class:`ReplyIntake`; the sending half, sampling and cohort messages, is in ``base``):

- **Replies as they arrive, in a fixed order.** The round loop hands replies over as
  they come (:meth:`ReplyIntake.take`); each node is classified at once, and good
  updates are absorbed into the aggregate in fleet node order (message by message,
  each once every earlier message has its reply), so float sums are reproducible
  and, for strategies whose aggregate is a running sum (``begin_aggregate`` /
  ``absorb`` / ``merged``), a round's updates are never all held at once.
- **Untrusted replies.** Every sampled node ends the round with one status
  (:data:`~fogsim.study.results.STATUSES`): only ``ok`` updates are averaged. A reply
  with NaN/Inf is ``rejected`` before any strategy hook sees it; a crash (Flower error
  reply, or the node's own ``crash`` record), a node that went offline, one that
  refused to train over its budget, and one that never answered within
  ``round_timeout_s`` are each counted. With fewer than ``[simulation] min_replies``
  good updates the round keeps the previous model.
- **Accounting.** Bytes sent and received per node and round are counted from the
  actual arrays on the wire; with the client's training FLOPs they give each client's
  simulated timeline and energy (``fogsim.hardware.energy``). Clients slower than
  ``deadline_s`` are stragglers: counted, and left out of the aggregate. A node whose
  availability window ends before its own finish ``departed``: its update is lost,
  the energy it spent until then counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fogsim.flower import cohort, partial, verdict, wire
from fogsim.hardware.energy import has_energy, node_energy, timeline
from fogsim.study.results import STATUSES

ENERGY_PARTS = ("energy_j", "energy_compute_j", "energy_radio_j", "energy_idle_j")
# reply metrics that are not nodes.csv columns (the node is the row's key; a summed
# update's bytes up become ``bytes_up`` as every update's do)
NOT_IN_ROWS = (wire.NODE, wire.BYTES_UP, wire.FINITE)


@dataclass
class RoundReplies:
    """What a training round's replies have said so far (:meth:`ReplyIntake.take`)."""

    status: dict[int, str]  # per sampled node
    message_of: dict[int, int]  # sampled node -> the index of the message it went in
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)  # nodes.csv fields
    crashes: dict[int, str] = field(default_factory=dict)  # node -> the client's error
    sim_times: list[float] = field(default_factory=list)  # how long each kept the round
    up: int = 0  # bytes uploaded
    replied: set[int] = field(default_factory=set)  # messages answered (by index)
    ready: dict[int, list[Message]] = field(default_factory=dict)  # good, not absorbed
    absorbed: int = 0  # messages whose updates are absorbed: the first ``absorbed``
    accepted: int = 0  # updates absorbed


class ReplyIntake:
    """Takes a round's replies in for a :class:`~fogsim.strategies.base.FogStrategy`
    (see the module doc); it uses the strategy's scenario, fleet, clock, messages sent
    and hooks."""

    @staticmethod
    def by_node(replies: Iterable[Message]) -> tuple[list[Message], dict[int, str]]:
        """Cohort replies taken apart (``fogsim.flower.cohort``): (each node's good
        reply as a Message of its own, sorted by fleet node; {node: crash reason} of
        the nodes whose handling raised on the client). A whole-message error reply
        (its actor died) is not here: :meth:`take` counts its whole cohort."""
        good, crashed = [], {}
        for msg in replies:
            if not msg.has_error():
                ok, failed = cohort.replies_of(msg)
                good += ok.values()
                crashed |= failed
        good.sort(key=lambda m: int(m.content[wire.METRICS][wire.NODE]))
        return good, crashed

    def window(self, node: int) -> verdict.Window:
        """What decides ``node``'s fate on the clock this round (its message went out
        at the round's start, :attr:`clock`)."""
        start = self.clock.now_s
        return verdict.Window(
            self.fleet.device(node),
            self.bytes_down[node],
            start,
            self.fleet.availability.until(node, start),
            self.scenario.simulation.deadline_s,
        )

    def arrived(self, msg: Message) -> tuple[int, str, dict[str, Any], float | None]:
        """(fleet node, status, nodes.csv fields, simulated seconds it kept the round
        going) of a non-error reply (``fogsim.flower.verdict``); no time for a node
        that dropped out or refused to train (a refusal's download is in
        :attr:`timelines`)."""
        metrics = msg.content[wire.METRICS]
        node, status = int(metrics[wire.NODE]), verdict.reply_status(msg.content)
        row = {k.replace("-", "_"): v for k, v in metrics.items() if k not in NOT_IN_ROWS}
        if status == "over_budget":
            self.timelines[node] = timeline(self.fleet.device(node), self.bytes_down[node], 0, 0.0)
        if status in ("dropped", "over_budget"):
            return node, status, row, None
        # a rejected reply may lack weights or FLOPs: count what arrived
        if wire.ARRAYS in msg.content:
            up = wire.array_bytes(msg.content[wire.ARRAYS])
        else:  # summed on the client, or missing
            up = int(metrics.get(wire.BYTES_UP, 0))
        flops = float(metrics.get(wire.TRAIN_FLOPS, 0.0))
        status, tl, gone = verdict.on_the_clock(status, self.window(node), up, flops)
        self.timelines[node] = tl
        row.update(bytes_up=up, sim_time_s=tl.total_s)
        if gone is not None:
            row["departed_s"] = gone
            return node, status, row, gone
        return node, status, row, tl.total_s

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's hook, every reply at once: :meth:`open_replies`, :meth:`take`,
        :meth:`close_replies` (fogsim's round loop calls those three itself, taking
        replies as they arrive)."""
        self.open_replies()
        self.take(server_round, replies)
        return self.close_replies(server_round)

    def open_replies(self) -> None:
        """Start taking the replies to :attr:`sent`: every sampled node is
        ``timed_out`` until its reply says otherwise."""
        of = {node: j for j, m in enumerate(self.sent) for node in cohort.nodes_of(m)}
        self.tally = RoundReplies(dict.fromkeys(of, "timed_out"), of)
        self.begin_aggregate()

    def take(self, server_round: int, replies: Iterable[Message]) -> None:
        """Classify the nodes of some of the round's replies (see :data:`STATUSES`) and
        absorb their good updates into the round's aggregate.

        Updates are absorbed in the order of the messages sent, and within a message by
        node (so, fleet node order: the float sums do not depend on which reply came
        first), each as soon as the replies to every earlier message are in; a reply
        is then dropped. So a round's replies need not all be held at once (1,000
        devices a round reply ~1 GB of sub-models)."""
        t, deadline = self.tally, self.scenario.simulation.deadline_s
        sent = {m.metadata.message_id: j for j, m in enumerate(self.sent)}
        for reply in replies:
            if reply.has_error():  # the ClientApp or its actor failed: its whole cohort
                j = sent.get(reply.metadata.reply_to_message_id)
                if j is not None:
                    t.replied.add(j)
                    nodes = cohort.nodes_of(self.sent[j])
                    t.crashes |= dict.fromkeys(nodes, reply.error.reason)
                continue
            nodes = cohort.reply_nodes(reply)
            if not nodes:
                continue
            j = t.message_of.get(nodes[0], len(self.sent))  # past the end: not sent by us
            t.replied.add(j)
            good, crashed = cohort.replies_of(reply)
            t.crashes |= crashed
            summed = partial.summed_nodes(reply)  # None: each update in its own record
            for node, msg in good.items():  # by node
                node, t.status[node], t.rows[node], sim_s = self.arrived(msg)
                if sim_s is None:
                    continue
                if t.status[node] not in ("rejected", "departed"):
                    self.on_reply(node, msg, straggler=t.status[node] == "straggler")
                    self.holders[node] = server_round
                if t.status[node] != "departed":  # its upload never (fully) arrived
                    t.up += t.rows[node]["bytes_up"]
                t.sim_times.append(min(sim_s, deadline) if deadline else sim_s)
                if t.status[node] == "ok" and summed is None:
                    t.ready.setdefault(j, []).append(msg)
            if summed is not None:
                self.take_sum(j, reply, summed, [n for n in good if t.status[n] == "ok"])
        while t.absorbed in t.replied:
            self.absorb_message(server_round, t.absorbed)

    def take_sum(self, j: int, reply: Message, summed: list[int], ok: list[int]) -> None:
        """The ``j``-th message's good updates as its client summed them
        (``fogsim.flower.partial``), once the server has found the same nodes good."""
        if sorted(summed) != sorted(ok):
            raise RuntimeError(
                f"the client summed the updates of nodes {sorted(summed)}, the server "
                f"counts {sorted(ok)} good: the two sides' rules differ (a bug)"
            )
        if summed:
            count = MetricRecord({wire.NODE: min(summed), wire.PARTIAL_NODES: len(summed)})
            content = RecordDict({wire.PARTIAL: reply.content[wire.PARTIAL], wire.METRICS: count})
            self.tally.ready.setdefault(j, []).append(
                Message(content, dst_node_id=0, message_type=MessageType.TRAIN)
            )

    def absorb_message(self, server_round: int, j: int) -> None:
        """Absorb the good updates of the round's ``j``-th message (node order; a
        client's sum of them counts as that many)."""
        t = self.tally
        for msg in sorted(
            t.ready.pop(j, []), key=lambda m: int(m.content[wire.METRICS][wire.NODE])
        ):
            self.absorb(server_round, msg)
            t.accepted += int(msg.content[wire.METRICS].get(wire.PARTIAL_NODES, 1))
        t.absorbed = j + 1

    def close_replies(self, server_round: int) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """End the round: nodes that never replied stay ``timed_out``; a row per node,
        the round's figures, the clock moved on; the new global model, or none with
        fewer than ``[simulation] min_replies`` good updates."""
        t, deadline = self.tally, self.scenario.simulation.deadline_s
        for j in sorted(t.ready):  # after messages that never had a reply
            self.absorb_message(server_round, j)
        problems = []  # what went wrong, in the clients' words
        for node, reason in sorted(t.crashes.items()):
            t.status[node] = "crashed"
            t.rows.setdefault(node, {})["error"] = reason  # nodes.csv says why
            problems.append(f"node {node} crashed: {reason}")
        if deadline and any(s in ("dropped", "timed_out") for s in t.status.values()):
            t.sim_times.append(deadline)  # the server waited for them until the deadline
        round_s = max(t.sim_times, default=0.0)
        self.record_round(server_round, t.status, t.rows, round_s)
        for node, what in t.status.items():  # a straggler works on past the round's end
            if what == "straggler" and (tl := self.timelines.get(node)) is not None:
                self.busy_until[node] = self.clock.now_s + tl.total_s
        for node, what in sorted(t.status.items()):
            if what not in ("ok", "crashed"):  # crashes are named above, with their error
                problems.append(f"node {node}: {what.replace('_', ' ')}")
        self.round_stats.update(
            aggregated=t.accepted,
            bytes_up=t.up,
            sim_time_s=round_s,
            sim_clock_s=self.clock.now_s,
            problems=problems,
        )
        self.clock.advance(round_s)
        if t.accepted < self.scenario.simulation.min_replies:
            return None, None
        return self.merged(server_round)

    def energy(self, node: int, what: str, row: dict[str, Any], round_s: float) -> dict[str, float]:
        """nodes.csv energy fields of ``node`` (``fogsim.hardware.energy``): a node that
        sent its update waits idle for the round to end, or for its availability window
        to close if that comes first (a gateway off from 50 s was once charged idle to
        the round's end at 75.6 s); none if its class lacks a figure or its timeline is
        unknown (it dropped out, crashed or never replied)."""
        tl = self.timelines.get(node)
        if tl is None or what in ("dropped", "crashed", "timed_out"):
            return {}
        wait_s = 0.0
        if what in ("ok", "straggler", "rejected"):
            start = self.clock.now_s  # the round's: the clock moves on after this round
            up_s = self.fleet.availability.until(node, start) - start
            wait_s = max(0.0, min(round_s, up_s) - tl.total_s)
        e = node_energy(
            self.fleet.device(node),
            tl,
            self.bytes_down[node],
            int(row.get("bytes_up") or 0),
            wait_s=wait_s,
            stop_s=row.get("departed_s"),
        )
        if e is None:
            return {}
        parts = (e.total_j, e.compute_j, e.radio_j, e.idle_j)
        return dict(zip(ENERGY_PARTS, parts, strict=True))

    def record_round(
        self,
        server_round: int,
        status: dict[int, str],
        rows: dict[int, dict[str, Any]],
        round_s: float,
    ) -> None:
        """One nodes.csv row per sampled node (with its energy and, from a trace, its
        battery level), and the round's counts per status and energy per class."""
        energy: Counter[str] = Counter()
        for node in sorted(status):
            row = rows.get(node, {})
            spent = self.energy(node, status[node], row, round_s)
            battery = self.fleet.availability.battery(node, self.clock.now_s)
            cls = self.fleet.device(node).name
            self.node_rows.append(
                {
                    "round": server_round,
                    "node": node,
                    "class": cls,
                    "budget_bytes": self.fleet.budget(node),
                    "status": status[node],
                    "bytes_down": self.bytes_down[node],
                    **row,
                    **spent,
                    "battery": "" if battery is None else battery,
                }
            )
            energy.update(spent)
            energy[f"energy_j_{cls}"] += spent.get("energy_j", 0.0)
        tally = Counter(status.values())
        self.round_stats.update(
            **{s: tally[s] for s in STATUSES if s != "ok"},
            failed_by_class=Counter(
                self.fleet.device(n).name for n, s in status.items() if s != "ok"
            ),
            energy=energy,
        )

    def energy_columns(self) -> dict[str, float]:
        """rounds.csv energy of the round just ended: per class with every energy
        figure (``energy_j_<class>``), and totals by part when every class has them."""
        spent = self.round_stats.get("energy", Counter())
        known = [c.name for c in self.fleet.classes if has_energy(c)]
        out = {f"energy_j_{c}": spent[f"energy_j_{c}"] for c in known}
        if len(known) == len(self.fleet.classes):
            out |= {k: spent[k] for k in ENERGY_PARTS}
        return out

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        good, _ = self.by_node(replies)
        return FedAvg.aggregate_evaluate(self, server_round, good) if good else None
