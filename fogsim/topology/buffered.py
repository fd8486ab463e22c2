"""Buffered asynchronous aggregation (FedBuff, Nguyen et al., AISTATS 2022):
``[topology] aggregation = "buffered"``.

``concurrency`` devices are always training. Each starts from the global model as it
is at its simulated start, and the server merges every ``buffer_size`` (K) replies in
the order they arrive on the simulated clock; each "round" of the run is one such
merge (one model version). A device that replies frees its slot, and a new device
starts at once with the model current then. An update that started from version
``v - s`` when the model is at version ``v`` is ``s`` stale, and counts with

    staleness weight  a(s) = 1 / sqrt(1 + s)      (FedBuff's polynomial choice),
    w <- w + eta * sum_k a(s_k) n_k m_k (w_k - w_start_k) / sum_k n_k m_k,

each parameter over the devices holding it (``m_k``; dense strategies: all of them),
``n_k`` a device's examples, ``eta`` the server's step (``server_lr``, default 1): with
no staleness and ``eta = 1``, exactly the strategy's own average.

**Real compute in batches, order from the clock.** Devices that start while version
``v`` is current all train on version ``v``, whenever that happens in simulated time;
so each window's devices (one in each place freed before it opened: by the previous
merge's last reply, or by an earlier reply that found no device waiting; and one per
each of this window's first K-1 replies) are sampled when the window opens and trained
in one Flower exchange. Their simulated durations (download + FLOPs / FLOP/s + upload,
from their replies) are then known, and the window is replayed event by event: the
K earliest replies among all devices in flight form the buffer, each of the first K-1
starting one of the new devices at its time (a reply with none left to start, when
too few devices were idle and up at the opening, frees its place for the next window:
``concurrency`` stays the number in flight whenever enough are idle). Deterministic
for a seed: sampling is seeded by (seed, version), ties broken by node.
Simplifications: a device that replies in a window can be sampled again from the next
window on; a reply that failed (crashed, dropped, rejected, over its budget) takes a
buffer place like an update. The devices in flight when the run ends (its last
round, a stop, too many failed rounds) are booked in its last merge (:meth:`end_run`);
a run resumed after a kill starts a fresh set (those in flight are not checkpointed).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid

from fogsim.device.pruning import extract_submodel
from fogsim.fleet import Fleet
from fogsim.flower import cohort, wire
from fogsim.hardware.energy import timeline
from fogsim.scenario import Scenario
from fogsim.strategies import build_strategy
from fogsim.study.results import STATUSES
from fogsim.topology.jobs import Job, book, messages_of, update_of

Send = Callable[[list[Message]], list[Message]]
State = dict[str, np.ndarray]


def staleness_weight(s: int) -> float:
    """FedBuff's polynomial staleness weight, ``1 / sqrt(1 + s)``."""
    return 1.0 / math.sqrt(1.0 + s)


def planned(scenario: Scenario) -> Scenario:
    """The scenario with DynHP's planned participations per node those of a buffered
    run (``rounds * buffer_size`` trainings over the fleet), unless set."""
    sc = scenario
    if sc.dynhp.participations is not None:
        return sc
    expected = sc.run.rounds * sc.topology.buffer_size / sc.fleet.nodes
    dynhp = sc.dynhp.model_copy(update={"participations": max(1, math.ceil(expected))})
    return sc.model_copy(update={"dynhp": dynhp})


class Buffered:
    """The scenario's strategy, run as FedBuff: stands where the strategy stands in the
    round loop (one ``train_round`` per model version)."""

    def __init__(self, scenario: Scenario, fleet: Fleet) -> None:
        self.scenario, self.fleet, self.topology = scenario, fleet, scenario.topology
        self.strategy = build_strategy(planned(scenario), fleet)
        self.eligible = self.strategy.takes_part.copy()
        self.flight: list[tuple[float, int, Job]] = []  # heap of (finish, node, job)
        # times of places freed and not yet refilled (the last merge's reply, and replies
        # that found no device waiting): the next window starts a device in each
        self.free: list[float] = []
        self.merged_at: float | None = None  # the simulated time of the last merge
        self.opened = 0.0  # the simulated time the current window opened
        self.versions: dict[int, State] = {}  # model versions jobs in flight started from
        self.node_rows: list[dict[str, Any]] = []
        self.round_stats: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:  # evaluation, holders, checkpoints: the strategy's
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def energy_columns(self) -> dict[str, float]:
        self.strategy.round_stats = self.round_stats
        return self.strategy.energy_columns()

    # --- one model version ------------------------------------------------------
    def train_round(
        self, grid: Grid, rnd: int, arrays: ArrayRecord, send: Send
    ) -> ArrayRecord | None:
        """Version ``rnd - 1`` → ``rnd``: start this window's devices on the current
        model, train them, replay the window on the clock, merge its K replies."""
        jobs = self.open(grid, rnd, arrays)
        self.train(jobs, send)
        return self.close(rnd, jobs)

    def end_run(self, rnd: int) -> None:
        """The run ends with merge ``rnd`` (its last round, a stop, or too many failed
        rounds: the round loop says): the devices still in flight are booked in it."""
        unfinished, arrived = self.unfinished(rnd, self.strategy.clock.now_s)
        self.node_rows += unfinished
        book(self.round_stats, unfinished, arrived)

    def open(self, grid: Grid, rnd: int, arrays: ArrayRecord) -> list[Job]:
        """The window of version ``rnd - 1`` (``arrays``), opened at the clock's time:
        its devices sampled and sent the model, not yet trained. Those started by this
        window's replies have no start yet (:meth:`close` gives it). Apart from
        :meth:`close` so that a fog tier can train several windows in one exchange."""
        topo, clock = self.topology, self.strategy.clock
        version = rnd - 1
        self.versions[version] = {k: v.numpy() for k, v in arrays.items()}
        first = topo.concurrency if not self.flight and not self.free else 0
        spawns = topo.buffer_size - 1 + len(self.free)
        jobs = self.start_jobs(grid, rnd, arrays, first + spawns, version)
        # after sampling, which waits for the first window to open when nobody is up (read
        # before it, the clock stood still and every device sampled left at once)
        self.opened = clock.now_s
        for job in jobs[:first]:
            job.start = self.opened
        # a freed place starts its device now (flat: the last merge's reply opened this
        # window; a fog waiting for the cloud's model starts it when that arrives)
        placed = jobs[first : first + len(self.free)]
        for job, freed in zip(placed, self.free, strict=False):
            job.start = max(freed, self.opened)
        self.free = self.free[len(placed) :]  # too few idle devices: for the next window
        return jobs

    def close(self, rnd: int, jobs: list[Job]) -> ArrayRecord | None:
        """The trained window replayed on the clock: the K earliest replies in flight
        form the buffer, each of the first K-1 starting a waiting device (not before
        the window opened: the model it trains on is there only then), then the merge."""
        topo, clock, opened = self.topology, self.strategy.clock, self.opened
        for job in jobs:
            if not math.isnan(job.start):
                self.push(job)
        waiting = [j for j in jobs if math.isnan(j.start)]  # started by this window's replies
        buffer: list[Job] = []
        until = self.fleet.availability.until  # the end of a device's window (itself: off)
        while len(buffer) < topo.buffer_size and self.flight:  # else too few were up
            _, _, job = heapq.heappop(self.flight)
            buffer.append(job)
            start = max(job.finish, opened)
            last = len(buffer) == topo.buffer_size  # the merge's reply: the next model's place
            while not last and waiting and until(waiting[0].node, start) <= start:
                waiting.pop(0)  # it left before its place freed: never sent the model
            if not last and waiting:  # a waiting device, still up, starts in the freed place
                nxt = waiting.pop(0)
                nxt.start = start
                self.push(nxt)
            else:  # the next window fills it
                self.free.append(job.finish)
        # the merge happens at the last reply, or at the opening if that came earlier
        self.merged_at = max(buffer[-1].finish, opened) if buffer else None
        clock.now_s = self.merged_at if buffer else opened
        return self.merge(rnd, rnd - 1, buffer, opened)

    def push(self, job: Job) -> None:
        """A started job into the flight: a device whose availability window closes before
        its own finish leaves then, freeing its place (lock-step rounds count it until it
        left too); its update is lost (``departed``, at the merge)."""
        left = max(0.0, self.fleet.availability.until(job.node, job.start) - job.start)
        job.departs, job.duration = left < job.duration, min(job.duration, left)
        heapq.heappush(self.flight, (job.finish, job.node, job))

    def start_jobs(
        self, grid: Grid, rnd: int, arrays: ArrayRecord, k: int, version: int
    ) -> list[Job]:
        """``k`` idle devices, up at the window's opening, sampled (seeded by the
        version) and sent the current model."""
        s = self.strategy
        busy = np.zeros(self.fleet.num_nodes, dtype=bool)
        busy[[j.node for _, _, j in self.flight]] = True
        s.takes_part = self.eligible & ~busy
        nodes = s.sample(k, grid, rnd)
        s.takes_part = self.eligible
        names = (c.name for c in self.fleet.classes)
        self.up_by_class = dict(zip(names, s.up_by_class.tolist(), strict=True))
        if hasattr(s, "global_state"):
            s.global_state = self.versions[version]
        config = ConfigRecord({wire.ROUND: rnd})
        messages = s._messages(nodes, arrays, config, MessageType.TRAIN, rnd)
        return [Job(n, version, s.bytes_down[n], m) for m in messages for n in cohort.nodes_of(m)]

    def train(self, jobs: list[Job], send: Send) -> None:
        """Real training through Flower, then each job's simulated duration: its own
        timeline, cut at ``deadline_s``; a failed job takes its download (or the
        deadline, when one is set: the server waits that long for it)."""
        replies = send(messages_of(jobs))
        by_node = {j.node: j for j in jobs}
        for msg in replies:
            if msg.has_error():  # the whole cohort failed: each of its jobs gets the error
                for job in jobs:
                    if job.message.metadata.message_id == msg.metadata.reply_to_message_id:
                        job.reply = Message(msg.error, reply_to=job.message)
                continue
            good, crashed = cohort.replies_of(msg)
            for node, reply in good.items():
                if node in by_node:
                    by_node[node].reply = reply
            for node, reason in crashed.items():
                if node in by_node:
                    job = by_node[node]
                    job.reply = Message(Error(0, reason), reply_to=job.message)
        deadline = self.scenario.simulation.deadline_s or math.inf
        for job in jobs:
            update = update_of(job)
            own = timeline(self.fleet.device(job.node), job.bytes_down, *(update or (0, 0.0)))
            failed = update is None and math.isfinite(deadline)
            job.duration = deadline if failed else min(own.total_s, deadline)

    # --- the merge ---------------------------------------------------------------
    def merge(self, rnd: int, version: int, buffer: list[Job], opened: float) -> ArrayRecord | None:
        """Classify and account the buffer's replies, then add their staleness-weighted
        updates to the current model (module doc)."""
        s = self.strategy
        self.node_rows, accepted, energy = [], [], Counter()
        status_of: dict[int, str] = {}
        problems = []
        for job in sorted(buffer, key=lambda j: (j.finish, j.node)):
            s.bytes_down[job.node] = job.bytes_down
            s.clock.now_s = job.start
            row: dict[str, Any] = {}
            if job.reply is None:
                what = "timed_out"
            elif job.reply.has_error():
                what, row = "crashed", {"error": job.reply.error.reason}  # nodes.csv says why
                problems.append(f"node {job.node} crashed: {job.reply.error.reason}")
            else:
                _, what, row, _ = s.arrived(job.reply)
                if what not in ("rejected", "departed", "dropped", "over_budget"):
                    s.on_reply(job.node, job.reply, straggler=what == "straggler")
                    s.holders[job.node] = rnd
                if what == "ok":
                    accepted.append(job)
            status_of[job.node] = what
            spent = s.energy(job.node, what, row, round_s=job.duration)  # no waiting: async
            energy.update(spent)
            energy[f"energy_j_{self.fleet.device(job.node).name}"] += spent.get("energy_j", 0.0)
            self.node_rows.append(self.node_row(rnd, job, what, row, spent, version))
        s.clock.now_s = self.merged_at or opened
        tally = Counter(status_of.values())
        self.round_stats = {
            "sampled": len(buffer),
            "aggregated": len(accepted),
            "up_by_class": self.up_by_class,
            **{st: tally[st] for st in STATUSES if st != "ok"},
            "failed_by_class": Counter(
                self.fleet.device(n).name for n, st in status_of.items() if st != "ok"
            ),
            # a departed device's upload never (fully) arrived, as in lock-step rounds
            "bytes_up": sum(
                r.get("bytes_up") or 0 for r in self.node_rows if r["status"] != "departed"
            ),
            "bytes_down_train": sum(j.bytes_down for j in buffer),
            "sim_clock_s": opened,
            "sim_time_s": (self.merged_at or opened) - opened,
            "energy": energy,
            "problems": problems,
        }
        new = None
        if len(accepted) >= self.scenario.simulation.min_replies:
            new = self.apply(rnd, version, accepted)
        self.forget_versions()
        return new

    def unfinished(self, rnd: int, end_s: float) -> tuple[list[dict[str, Any]], int]:
        """nodes.csv rows of the devices sent the model by the run's end (``end_s`` on the
        clock) whose update no merge took, and the bytes of those updates that arrived.
        Booked in the last merge's row (:func:`book`); left out, they were in no row: 5
        of 17 downloads in a 20-node run, ~5% of a long run's.

        Each is ``unfinished``: still training at the end or, at a fog tier, finished
        after its fog's last merge: its reply waiting in the fog's buffer (it arrived:
        its upload counts) or gone with the device, whose window closed (``departed_s``
        says when). Its energy is its own timeline's until it stopped: its finish or the
        end, the earlier. A late fog's devices started after the end were never sent
        the model then."""
        s, rows, arrived = self.strategy, [], 0
        for _, _, job in sorted(j for j in self.flight if j[2].start <= end_s):
            up, flops = update_of(job) or (0, 0.0)  # the timeline that set its duration
            s.bytes_down[job.node] = job.bytes_down
            device = self.fleet.device(job.node)
            tl = s.timelines[job.node] = timeline(device, job.bytes_down, up, flops)
            stop = float(min(job.finish, end_s) - job.start)
            done = job.finish <= end_s  # only at a fog tier (or a tie with the last reply)
            arrived += up if done and not job.departs else 0
            cut = {"bytes_up": up, "departed_s": stop}
            spent = s.energy(job.node, "unfinished", cut, round_s=0.0)
            own = {"bytes_up": up, "sim_time_s": tl.total_s}  # as a departed node's
            if done and job.departs:
                own["departed_s"] = stop
            row = self.node_row(rnd, job, "unfinished", own, spent, rnd)
            rows.append({**row, "sim_end_s": job.start + stop})
        self.flight = []
        return rows, arrived

    def node_row(
        self, rnd: int, job: Job, what: str, row: dict, spent: dict, version: int
    ) -> dict[str, Any]:
        battery = self.fleet.availability.battery(job.node, job.start)
        return {
            "round": rnd,
            "node": job.node,
            "class": self.fleet.device(job.node).name,
            "budget_bytes": self.fleet.budget(job.node),
            "status": what,
            "bytes_down": job.bytes_down,
            **row,
            **spent,
            "battery": "" if battery is None else battery,
            "staleness": version - job.version,
            "sim_start_s": job.start,
            "sim_end_s": job.finish,  # its reply's arrival (or its leaving) on the clock
        }

    def apply(self, rnd: int, version: int, accepted: list[Job]) -> ArrayRecord:
        """``w + eta * sum a(s) n m Δ / sum n m`` through the strategy's own aggregation (on
        updates, from a zero model): once weighted by ``a(s) n``, once by ``n``."""
        s, current = self.strategy, self.versions[version]
        step = self.topology.server_lr or 1.0
        weighted = [self.delta(j, staleness_weight(version - j.version)) for j in accepted]
        plain = [self.delta(j, 1.0) for j in accepted]
        mean, w_stale = self.aggregate(weighted, current, rnd)
        _, w_plain = self.aggregate(plain, current, rnd)
        new = {}
        for k, v in current.items():
            ws = w_stale[k] if isinstance(w_stale, dict) else w_stale
            wp = w_plain[k] if isinstance(w_plain, dict) else w_plain
            scale = np.where(wp > 0, ws / np.maximum(wp, 1e-300), 0.0)
            new[k] = (v + step * scale * mean[k]).astype(v.dtype)
        if isinstance(w_plain, dict):  # sub-models: the parameters some update held
            self.round_stats["union_params"] = sum(int((d > 0).sum()) for d in w_plain.values())
        if hasattr(s, "global_state"):
            s.global_state = new
        return wire.numpy_record(new)

    def aggregate(self, replies: list[Message], like: State, rnd: int) -> tuple[State, Any]:
        """The strategy's average of ``replies`` (updates) from a zero model, and the
        weight behind each parameter (sub-models) or in all (dense)."""
        s = self.strategy
        if hasattr(s, "global_state"):
            s.global_state = {k: np.zeros_like(v) for k, v in like.items()}
        s.merge_weights = None  # type: ignore[attr-defined]
        arrays, _ = s.aggregate(rnd, replies)
        weights = getattr(s, "merge_weights", None)
        if weights is None:
            weights = float(sum(float(m.content[wire.METRICS][wire.NUM_EXAMPLES]) for m in replies))
        return {k: v.numpy().astype(np.float64) for k, v in arrays.items()}, weights

    def delta(self, job: Job, weight: float) -> Message:
        """The job's reply as an update from the model it started from, its examples
        scaled by ``weight``."""
        content = job.reply.content
        start = self.versions[job.version]
        if wire.KEPT in content:
            start = {
                k: v.numpy()
                for k, v in extract_submodel(start, wire.unpack_kept(content[wire.KEPT])).items()
            }
        update = {k: v.numpy() - start[k] for k, v in content[wire.ARRAYS].items()}
        metrics = MetricRecord(dict(content[wire.METRICS]))
        metrics[wire.NUM_EXAMPLES] = float(metrics[wire.NUM_EXAMPLES]) * weight
        records = {k: v for k, v in content.items() if k not in (wire.ARRAYS, wire.METRICS)}
        body = RecordDict(
            {**records, wire.ARRAYS: wire.numpy_record(update), wire.METRICS: metrics}
        )
        return Message(
            body, dst_node_id=job.message.metadata.dst_node_id, message_type=MessageType.TRAIN
        )

    def forget_versions(self) -> None:
        """Keep only the model versions a job in flight (or the next window) starts from."""
        keep = {j.version for _, _, j in self.flight} | {max(self.versions)}
        self.versions = {v: st for v, st in self.versions.items() if v in keep}
