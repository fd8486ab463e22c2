"""A scenario checked beyond its schema: its strategy, its fleet and its data.

``fogsim.scenario`` validates each field and how fields relate; what needs more is
checked here: the strategy registry (a plug-in module to import, the strategy's own
parameters), the fleet (budgets drawn from the seed) and the data set on disk. Errors
are :class:`~fogsim.scenario.ScenarioError`\\ s in the scenario's own form: the file,
then each field and what is wrong with it.
"""

from __future__ import annotations

from pathlib import Path

from fogsim.data import read_dataset
from fogsim.device.heap import HeapCounterUnavailable
from fogsim.fleet import build_fleet, check_trainable
from fogsim.scenario import Scenario, ScenarioError, load_scenario, shown
from fogsim.scenario.files import from_set
from fogsim.strategies import strategy_class
from fogsim.strategies.build import runs_dynhp
from fogsim.strategies.registry import StrategyError
from fogsim.topology import TopologyError, round_driver


def problems(sc: Scenario) -> list[str]:
    """What is wrong with ``sc`` beyond its schema, one ``field: reason`` each."""
    found = []
    try:
        strategy_class(sc)
    except StrategyError as e:
        found.append(str(e))
    fleet = build_fleet(sc.fleet, sc.run.seed)
    if sc.model.factory:  # its memory figure is the heap counter's, measured once
        try:
            sc.arch  # noqa: B018
        except (HeapCounterUnavailable, RuntimeError, OSError) as e:
            return [
                *found,
                f"model.factory: {sc.model.factory!r}: its training memory "
                f"could not be measured with the heap counter: {e}",
            ]
    try:
        check_trainable(sc, fleet, dynhp=not found and runs_dynhp(sc))
    except ValueError as e:
        found.append(f"fleet: {e}")
    if not found:  # the strategy's own checks assume a known strategy and a usable fleet
        try:
            round_driver(sc, fleet)
        except (StrategyError, TopologyError) as e:
            found.append(str(e))
    return found


def check(sc: Scenario, source: str, overrides: list[str] | None = None) -> None:
    """Raise a ScenarioError naming ``source`` and every problem of ``sc`` (each one a
    ``--set`` of ``overrides`` set says so)."""
    if found := problems(sc):
        said = [f"  {p}{from_set(overrides or [], p.partition(':')[0])}" for p in found]
        raise ScenarioError("\n".join([f"{source}: invalid scenario", *said]))


def load_checked(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read, override (``--set``) and validate a scenario file, then :func:`check` it."""
    sc = load_scenario(path, overrides)
    check(sc, shown(str(path)), overrides)
    return sc


def check_data(sc: Scenario) -> None:
    """The data set loads and splits across the fleet (before any Ray process starts);
    raises DatasetNotFoundError, DatasetError, or ScenarioError naming the split."""
    data = read_dataset(sc.data.dataset, sc.data.path)  # uncached: the driver keeps none
    d = sc.data
    if data.image_shape != tuple(d.image_shape):
        raise ScenarioError(
            f"data.image_shape = {list(d.image_shape)}: {d.path or d.dataset} holds images "
            f"of {list(data.image_shape)} (channels, height, width)"
        )
    top = int(max(data.train_y.max(initial=0), data.test_y.max(initial=0)))
    if top >= d.num_classes:
        raise ScenarioError(
            f"data.num_classes = {d.num_classes}: {d.path or d.dataset} has label {top}; "
            f"num_classes must be at least {top + 1}"
        )
    if d.partitioning == "draws":
        if d.samples_per_node > len(data.train_y):
            raise ScenarioError(
                f"data.samples_per_node = {d.samples_per_node}: the training set holds only "
                f"{len(data.train_y)} samples"
            )
        return
    try:
        d.split(data.train_y, sc.fleet.nodes, sc.run.seed, sc.fleet.data_shares)
    except ValueError as e:
        raise ScenarioError(
            f"data.partitioning = {d.partitioning!r} over fleet.nodes = {sc.fleet.nodes}: {e}"
        ) from None
