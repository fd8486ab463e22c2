"""Scenarios: the schema (:mod:`~fogsim.scenario.schema`) and reading scenario files
with ``--set`` overrides (:mod:`~fogsim.scenario.files`)."""

from fogsim.scenario.files import (
    ScenarioError,
    apply_overrides,
    load_scenario,
    parse_override,
    read_toml,
    shown,
    validate_scenario,
)
from fogsim.scenario.fleet_section import DeviceClass, Diurnal, FleetSection
from fogsim.scenario.schema import (
    DataSection,
    DynHPSection,
    FaultRates,
    FaultsSection,
    ModelSection,
    RunSection,
    Scenario,
    SimulationSection,
    StrategySection,
    TrainSection,
)
from fogsim.scenario.topology_section import Link, TopologySection

__all__ = [
    "DataSection",
    "DeviceClass",
    "Diurnal",
    "DynHPSection",
    "FaultRates",
    "FaultsSection",
    "FleetSection",
    "Link",
    "ModelSection",
    "RunSection",
    "Scenario",
    "ScenarioError",
    "SimulationSection",
    "StrategySection",
    "TopologySection",
    "TrainSection",
    "apply_overrides",
    "load_scenario",
    "parse_override",
    "read_toml",
    "shown",
    "validate_scenario",
]
