"""One device's training in flight on the simulated clock, as the buffered drivers
(``buffered``, ``fog_buffered``) keep it: sent with a model version, replied after its
simulated duration, booked in a merge or, when the run ends first, as unfinished."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from flwr.app import Message

from fogsim.flower import wire
from fogsim.strategies.intake import ENERGY_PARTS


@dataclass
class Job:
    """One device's training: sent at ``start`` with model ``version``."""

    node: int
    version: int
    bytes_down: int
    message: Message
    start: float = math.nan
    duration: float = 0.0
    reply: Message | None = None
    departs: bool = False  # its availability window closes before its own finish

    @property
    def finish(self) -> float:
        return self.start + self.duration


def update_of(job: Job) -> tuple[int, float] | None:
    """(bytes up, training FLOPs) of the update the job's reply carries; None when it
    failed or carries none: its own timeline is then its download alone."""
    reply = job.reply
    if reply is None or reply.has_error() or wire.ARRAYS not in reply.content:
        return None
    flops = float(reply.content[wire.METRICS].get(wire.TRAIN_FLOPS, 0.0))
    return wire.array_bytes(reply.content[wire.ARRAYS]), flops


def messages_of(jobs: list[Job]) -> list[Message]:
    """The jobs' Flower messages, each once (a cohort carries several jobs)."""
    return list({id(j.message): j.message for j in jobs}.values())


def book(stats: dict[str, Any], unfinished: list[dict[str, Any]], arrived: int) -> None:
    """Add ``Buffered.unfinished``'s rows and the bytes of their updates that
    arrived to a round's counts: their downloads, uploads and energy (not ``sampled``:
    no merge sampled them, so they are not ``failed``)."""
    stats["unfinished"] = stats.get("unfinished", 0) + len(unfinished)
    stats["bytes_down_train"] = stats.get("bytes_down_train", 0) + sum(
        r["bytes_down"] for r in unfinished
    )
    stats["bytes_up"] = stats.get("bytes_up", 0) + arrived
    energy = stats.setdefault("energy", Counter())
    for r in unfinished:
        energy.update({k: r[k] for k in ENERGY_PARTS if k in r})
        energy[f"energy_j_{r['class']}"] += r.get("energy_j", 0.0)
