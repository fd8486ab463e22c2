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
from fogsim.scenario.schema import (
    DataSection,
    DeviceClass,
    DynHPSection,
    FaultRates,
    FaultsSection,
    FleetSection,
    ModelSection,
    RunSection,
    Scenario,
    SimulationSection,
    StrategySection,
    TrainSection,
)

__all__ = [
    "DataSection",
    "DeviceClass",
    "DynHPSection",
    "FaultRates",
    "FaultsSection",
    "FleetSection",
    "ModelSection",
    "RunSection",
    "Scenario",
    "ScenarioError",
    "SimulationSection",
    "StrategySection",
    "TrainSection",
    "apply_overrides",
    "load_scenario",
    "parse_override",
    "read_toml",
    "shown",
    "validate_scenario",
]
