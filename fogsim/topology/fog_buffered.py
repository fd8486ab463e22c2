"""Buffered asynchronous rounds at the fog tier: ``[topology] kind = "hierarchical"``
with ``aggregation = "buffered"``.

**Fogs.** Each fog runs FedBuff (:class:`~fogsim.topology.buffered.Buffered`, the flat
code itself) over its own devices, on its own simulated clock, with its own model
versions: its share of ``concurrency`` devices always training, a merge every its
share of ``buffer_size`` replies in arrival order, staleness counted in its own
merges. The shares are ``concurrency`` and ``buffer_size`` split in proportion to the
fogs' sizes (largest remainder), as the lock-step fog tier splits
``clients_per_round``: the scenario's figures stay the fleet's (100 devices busy in
all, 20 replies per fog round over all fogs), a scenario can move between flat and
hierarchical without retuning, and one fog holding every device *is* the flat
buffered run. A fog whose share would be zero is an error (no silent rounding up).

**Cloud: synchronous, one merge per cloud round.** Every fog makes ``fog_rounds``
merges, sends its model and the weight behind it (the examples behind each parameter
over those merges, unweighted by staleness: the data the fog's progress rests on) up
``cloud_link``, and the cloud merges the fog models exactly as the lock-step fog tier
does (:mod:`fogsim.topology.merge`, ``cloud_deadline_s`` included). Not buffered over
fog arrivals because (a) fog models are whole models that have drifted from a common
base, so merging them one at a time would need a second staleness rule across tiers
with no published counterpart to check it against, (b) a common base keeps the exact
merge property (sums and counts add up, one fog = flat), and (c) what the cloud waits
for is the slowest fog's ``fog_rounds`` merges, each the first replies among its busy
devices, not the slowest device: the spread in device speeds, which FedBuff is for,
is absorbed at the fogs.

**The clock across cloud rounds.** A fog's devices are asynchronous and keep training
while their fog waits for the cloud's model: their replies wait in the fog's buffer,
and a device freed meanwhile restarts when the cloud's model arrives (``Buffered``'s
``open``/``close``: no start before the window opens). The cloud's model replaces the
fog's current version in place (the same version number: it is the fog's next model),
so a device's staleness counts its fog's merges, and each update is still the
difference from the model the device started from. With one fog and no time on the
cloud link, the cloud's model is the fog's and every time is the flat run's.

**Real compute.** Each fog round, every fog's window (its devices started by this
round) goes to Flower in one exchange; each fog then replays its own window.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.serverapp import Grid

from fogsim.fleet import Fleet
from fogsim.scenario import Scenario
from fogsim.topology.assign import TopologyError, fog_shares
from fogsim.topology.buffered import Buffered
from fogsim.topology.hierarchy import Hierarchy, Send, fog_scenario, round_weight
from fogsim.topology.jobs import Job, book, messages_of
from fogsim.topology.merge import add


def shares(scenario: Scenario, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(buffer_size, concurrency) per fog: the scenario's split by fog size; an error
    naming the field if a fog would get none or a buffer over its concurrency."""
    topo = scenario.topology
    buffers = fog_shares(topo.buffer_size, sizes, "topology.buffer_size")
    busy = fog_shares(topo.concurrency, sizes, "topology.concurrency")
    if (buffers > busy).any():
        f = int(np.argmax(buffers - busy))
        raise TopologyError(
            f"topology.buffer_size: {topo.buffer_size} gives fog {f} a buffer of "
            f"{buffers[f]}, over its concurrency {busy[f]} (topology.concurrency = "
            f"{topo.concurrency}); allowed: a buffer_size at most concurrency per fog"
        )
    return buffers, busy


def buffered_fog_scenario(scenario: Scenario, buffer: int, concurrency: int) -> Scenario:
    """One fog's scenario (:func:`~fogsim.topology.hierarchy.fog_scenario`, its share
    of replies per merge standing for its clients per round) with its FedBuff shares;
    DynHP's planned participations those of the whole run (``rounds x fog_rounds x
    buffer_size`` trainings over the fleet), so pruning schedules do not depend on
    the split: one fog plans what the flat buffered run plans."""
    sc, topo = scenario, scenario.topology
    if sc.dynhp.participations is None:
        expected = sc.run.rounds * topo.fog_rounds * topo.buffer_size / sc.fleet.nodes
        dynhp = sc.dynhp.model_copy(update={"participations": max(1, math.ceil(expected))})
        sc = sc.model_copy(update={"dynhp": dynhp})
    sc = fog_scenario(sc, buffer)
    own = topo.model_copy(update={"buffer_size": buffer, "concurrency": concurrency})
    return sc.model_copy(update={"topology": own})


class BufferedHierarchy(Hierarchy):
    """A fog tier whose fogs run FedBuff; the cloud, time down and up the cloud link,
    accounting and evaluation are :class:`Hierarchy`'s."""

    def fog_driver(self, f: int, sizes: np.ndarray, fleet: Fleet) -> Buffered:
        buffers, busy = shares(self.scenario, sizes)
        sc = buffered_fog_scenario(self.scenario, int(buffers[f]), int(busy[f]))
        fog = Buffered(sc, fleet)
        fog.eligible &= self.fog_of == f
        fog.strategy.takes_part = fog.eligible.copy()
        return fog

    def end_run(self, rnd: int) -> None:
        """The run ends with cloud round ``rnd`` (the round loop says): each fog's devices
        whose update no merge took are booked in it (``Buffered.unfinished``), until the
        cloud's merge, the run's end."""
        last = {"round": rnd, "fog_round": self.topology.fog_rounds}
        for fog in self.fogs:
            last_merge = rnd * self.topology.fog_rounds  # the fog's model version
            rows, arrived = fog.strategy.unfinished(last_merge, self.cloud.clock.now_s)
            self.node_rows += [{**r, **last, "fog": fog.index} for r in rows]
            book(self.round_stats, rows, arrived)
            sent = sum(r["bytes_down"] for r in rows) + arrived
            self.round_stats["tiers"]["device_bytes"] += sent

    def fog_round(self, grid: Grid, g: int, rnd: int, j: int, send: Send) -> None:
        """Merge ``g`` (the ``j``-th of cloud round ``rnd``) at every fog: all fogs'
        new devices trained in one exchange, then each fog's window on its clock."""
        windows: list[list[Job]] = []
        for fog in self.fogs:
            fog.strategy.strategy.node_ids = self.mailboxes_of(grid)
            windows.append(fog.strategy.open(grid, g, fog.arrays))
        if j == 0:  # the whole fleet's, as fog 0 sampled it at the round's start
            self.round_stats["up_by_class"] = self.fogs[0].strategy.up_by_class
        sent = [m for jobs in windows for m in messages_of(jobs)]
        replies = self.exchange(grid, sent, send)
        for fog, jobs in zip(self.fogs, windows, strict=True):
            fog.strategy.train(jobs, lambda _: replies)  # each fog takes its own replies
            new = fog.strategy.close(g, jobs)
            if new is not None:
                fog.arrays = new
                fog.weights = add(fog.weights, round_weight(fog.strategy))
            self.collect(fog, rnd, j)
