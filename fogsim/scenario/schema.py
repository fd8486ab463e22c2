"""The scenario schema: one pydantic model per TOML section, validated strictly.

Every field has a default except ``[fleet]``; unknown keys are errors. Validators
check each field and how fields relate; what needs more than the schema (the
strategy registry, the fleet's budgets, the data set) is in ``fogsim.checks``.
"""

from __future__ import annotations

import math
import os
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from fogsim.device.arch import Arch
from fogsim.device.dynhp import DynHPConfig
from fogsim.device.factory import FactoryArch
from fogsim.device.memory import dynhp_bytes, need
from fogsim.device.training import OPTIMIZERS
from fogsim.scenario.base import Section
from fogsim.scenario.data_section import DataSection
from fogsim.scenario.fleet_section import FleetSection
from fogsim.scenario.model_section import ModelSection
from fogsim.scenario.topology_section import TopologySection, topology_problems
from fogsim.units import format_bytes


def _file_name(name: str) -> str:
    """A run name becomes a directory name: one path component."""
    if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError("must be a file name: not empty, '.' or '..', without / \\ or NUL")
    return name


class RunSection(Section):
    name: Annotated[str, AfterValidator(_file_name)] = "run"
    seed: int = Field(0, ge=0, le=2**32 - 1)
    rounds: int = Field(10, ge=1, le=100_000)
    output_dir: str = "runs"


class TrainSection(Section):
    local_epochs: int = Field(1, ge=1)
    optimizer: Literal[OPTIMIZERS] = "sgd"  # type: ignore[valid-type]
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    batch_size: int = Field(32, ge=1)

    @property
    def memory_kind(self) -> str:
        """The optimizer as the memory model names it (momentum keeps a buffer)."""
        if self.optimizer == "sgd":
            return "sgd-momentum" if self.momentum > 0 else "sgd"
        return self.optimizer


class DynHPSection(DynHPConfig):
    """``[dynhp]``: DynHP on each client of a pruning strategy (``fogsim.device.dynhp``,
    whose :class:`DynHPConfig` holds the fields), plus how many participations a node's
    schedule spans."""

    model_config = ConfigDict(frozen=False, validate_assignment=True)

    max_batch: int = Field(
        32,
        ge=1,
        description="largest batch a device grows to: in one-epoch federated rounds a "
        "bigger batch also means fewer steps (256 cost mask-union 0.2-0.7 pt in every "
        "class on the 5-class MNIST fleet), so the federated default is lower than "
        "DynHPConfig's",
    )
    participations: int | None = Field(
        None,
        ge=1,
        description="rounds of participation over which a node reaches its "
        "target (default: its expected participations, rounds x sampled / nodes)",
    )

    def device_config(self, target_compression: float | None = None) -> DynHPConfig:
        """The config one device runs DynHP with (its own target, if given)."""
        fields = self.model_dump(exclude={"participations"})
        if target_compression is not None:
            fields["target_compression"] = target_compression
        return DynHPConfig(**fields)


class StrategySection(Section):
    name: str = "fedavg"
    params: dict[str, Any] = {}
    module: str | None = Field(
        None,
        pattern=r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$",
        description="a module to import first: it registers your own strategies",
    )
    flower: str | None = Field(
        None,
        pattern=r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$",
        description="a Flower strategy class as 'module:Class' (e.g. "
        "'flwr.serverapp.strategy:FedAdam'), built with params as its keyword "
        "arguments; it trains the dense model on the nodes that can hold it",
    )

    @model_validator(mode="after")
    def _one_strategy(self) -> StrategySection:
        # a name other than the default (a resolved scenario, as scenario.json holds it
        # for --resume, lists the default name beside the Flower class)
        if self.flower is not None and self.name != type(self).model_fields["name"].default:
            raise ValueError(f"name = {self.name!r} and flower = {self.flower!r}: give one of them")
        return self

    @property
    def label(self) -> str:
        """The strategy as results name it: its registered name or its Flower class."""
        return self.flower or self.name


COHORT_CAP = 64  # default nodes per message at most: an actor holds a cohort's data
# and replies at once, and the server absorbs replies in message order (so a big
# cohort's reply holds later ones back); a message's cost (~15-20 ms) is then a few
# percent of a cohort of small devices' training (64 x 5-8 ms)


class SimulationSection(Section):
    """How the fleet is run on Flower's simulation engine (Ray).

    Cost follows the messages of a round, not the fleet: Flower registers one node per
    message in flight (``flower_nodes``), and the fleet node a message is for travels
    in the message, so a fleet of 10,000 costs what the sampled clients cost.
    ``cpus_per_client`` is both the Ray CPUs each client actor reserves and its torch
    thread count, so Ray runs ``floor(CPUs / cpus_per_client)`` actors at once and
    they never oversubscribe the cores.
    """

    clients_per_round: int = Field(10, ge=1)
    evaluate_clients: int = Field(0, ge=0, description="client-side evaluations per round")
    cpus_per_client: float = Field(
        1.0,
        gt=0,
        description="Ray CPUs per client actor, also its torch threads (rounded down, "
        "at least 1); concurrent actors = floor(CPUs / cpus_per_client)",
    )
    max_in_flight: int | None = Field(
        100,
        ge=1,
        description="messages at Flower at once: a round with more sends the next as a "
        "reply frees a mailbox (Flower's in-memory engine rescans every pending "
        "message for every registered node ten times a second: its cost grows with "
        "the square of this); none = all of a round at once",
    )
    cohort_size: int | None = Field(
        None,
        ge=1,
        description="fleet nodes per Flower message: each message carries a cohort of "
        "sampled nodes, trained one after another by one client actor (results do not "
        "depend on it); none = about two messages per local actor and round, at most "
        f"{COHORT_CAP} nodes each",
    )
    ray_address: str | None = None
    engine: Literal["ray"] = "ray"
    round_timeout_s: float = Field(3600.0, gt=0)
    deadline_s: float | None = Field(
        None, gt=0, description="simulated seconds; slower clients' updates are dropped"
    )
    start_h: float = Field(
        0.0,
        ge=0,
        le=24 * 365,
        description="simulated clock time at which the run starts, hours (t = 0 is midnight "
        "of day 1 on the clock that traces and diurnal models use)",
    )
    round_interval_s: float | None = Field(
        None,
        gt=0,
        description="simulated seconds from one round's start to the next's, at least "
        "(rounds on a schedule); none = the next round starts when this one ends",
    )
    min_replies: int = Field(
        1, ge=1, description="fewer good updates in a round: the previous model is kept"
    )
    max_failed_rounds: int = Field(
        3,
        ge=0,
        description="rounds in a row in which no sampled client's update counts before "
        "the run stops with an error (the clients' errors shown); 0 = never stop",
    )
    device_eval_nodes: int | None = Field(
        10,
        ge=0,
        description="per class and round, devices whose own model is evaluated (a seeded "
        "sample of those holding one; none = all, 0 = none); at the end every one is",
    )
    device_eval_samples: int | None = Field(
        2000,
        ge=1,
        description="test images for the per-round device evaluation (a seeded subset; "
        "none = the whole test split, as at the end)",
    )

    def cohort(self, nodes: int) -> int:
        """Fleet nodes per message for a round of ``nodes``: ``cohort_size``, or enough
        that the round makes about two messages per actor this machine runs at once
        (so each actor gets work twice and a slow cohort does not hold the round), at
        most :data:`COHORT_CAP`."""
        if self.cohort_size is not None:
            return self.cohort_size
        actors = max(1, int((os.cpu_count() or 1) / self.cpus_per_client))
        return max(1, min(COHORT_CAP, math.ceil(nodes / (2 * actors))))

    def messages(self, nodes: int) -> int:
        """Flower messages that carry a round of ``nodes`` fleet nodes."""
        return math.ceil(nodes / self.cohort(nodes)) if nodes else 0

    @property
    def flower_nodes(self) -> int:
        """Nodes registered with Flower: one per message in flight, not per fleet node
        (a message carries a cohort of fleet nodes)."""
        wanted = max(self.messages(self.clients_per_round), self.messages(self.evaluate_clients))
        return min(wanted, self.max_in_flight or wanted)

    @property
    def torch_threads(self) -> int:
        """Torch intra-op threads of a client actor: its Ray CPUs, at least one."""
        return max(1, int(self.cpus_per_client))


class FaultRates(Section):
    """Per-round probabilities that a sampled client misbehaves (at most one fault)."""

    crash: float = Field(0.0, ge=0, le=1, description="raises during training")
    drop: float = Field(0.0, ge=0, le=1, description="goes offline: no update this round")
    corrupt: float = Field(0.0, ge=0, le=1, description="returns NaN/Inf weights")

    @model_validator(mode="after")
    def _total(self) -> FaultRates:
        if self.crash + self.drop + self.corrupt > 1:
            raise ValueError(
                f"crash + drop + corrupt = {self.crash + self.drop + self.corrupt:g} exceeds 1"
            )
        return self


class FaultsSection(FaultRates):
    """Fault injection: rates for every class, overridden per class by name in
    ``[faults.classes.<name>]``; see ``clients.fog_client.injected_fault``."""

    classes: dict[str, FaultRates] = {}

    def rates(self, device_class: str) -> FaultRates:
        return self.classes.get(device_class, self)


class Scenario(Section):
    run: RunSection = RunSection()
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    train: TrainSection = TrainSection()
    fleet: FleetSection
    strategy: StrategySection = StrategySection()
    dynhp: DynHPSection = DynHPSection()
    simulation: SimulationSection = SimulationSection()
    faults: FaultsSection = FaultsSection()
    topology: TopologySection = TopologySection()

    @model_validator(mode="after")
    def _cross_checks(self) -> Scenario:
        """Fields that must agree with each other. What needs more than the schema (the
        strategy registry, the fleet's budgets, the data set) is in ``fogsim.checks``."""
        nodes, sim, problems = self.fleet.nodes, self.simulation, self.model.problems(self.data)
        # buffered rounds take topology.buffer_size replies a merge, not clients_per_round
        buffered = self.topology.aggregation == "buffered"
        per_round = self.topology.buffer_size if buffered else sim.clients_per_round
        per_round_field = "topology.buffer_size" if buffered else "simulation.clients_per_round"
        counted = ("evaluate_clients",) if buffered else ("clients_per_round", "evaluate_clients")
        for field in counted:
            if getattr(sim, field) > nodes:
                problems.append(
                    f"simulation.{field}: {getattr(sim, field)} exceeds fleet.nodes = {nodes}"
                )
        names = [c.name for c in self.fleet.classes]
        for name in self.faults.classes:
            if name not in names:
                problems.append(
                    f"faults.classes.{name}: no such class in fleet.classes; "
                    f"allowed: {', '.join(names)}"
                )
        if self.fleet.data_shares is not None and self.data.partitioning not in (
            "iid",
            "dirichlet",
        ):
            problems.append(
                f"data.partitioning: {self.data.partitioning!r} takes no node weights; "
                "fleet.file's data_share needs 'iid' or 'dirichlet'"
            )
        if sim.min_replies > per_round:
            problems.append(
                f"simulation.min_replies: {sim.min_replies} exceeds {per_round_field} = {per_round}"
            )
        problems += topology_problems(self.topology, self.fleet)
        if problems:  # one line each, field first (see _format_errors)
            raise ValueError("\n".join(problems))
        return self

    @property
    def arch(self) -> Arch | FactoryArch:
        """The dense global architecture on the data set's images and classes: a
        FogNet's, or the factory model's (``[model] factory``)."""
        return self.model.shape_for(self.data)

    def narrowest_need(self, dynhp: bool = False) -> int:
        """Bytes to train the narrowest model (one neuron per group) at ``[dynhp]
        min_batch``, beside DynHP's arrays if ``dynhp`` (the strategy's clients run
        it: ``strategies.build.runs_dynhp``): a node with less can train nothing. The
        one place the trainable-fleet check, the fleet table, its warning and the
        report's reasons take it from."""
        return need(self.arch.scaled(0.0), self.dynhp.min_batch, self.train.memory_kind, dynhp)

    def narrowest_need_said(self, dynhp: bool = False) -> str:
        """:meth:`narrowest_need` in words, with what it covers: the batch, the memory
        kind, and DynHP's arrays where they count (the trainable-fleet error and the
        fleet table's warning both say it)."""
        held = dynhp_bytes(self.arch.scaled(0.0)) if dynhp else 0
        return (
            f"{format_bytes(self.narrowest_need(dynhp))} at dynhp.min_batch = "
            f"{self.dynhp.min_batch} with {self.train.memory_kind}"
            + (f", DynHP's own arrays ({format_bytes(held)}) included" if held else "")
        )
