"""Any Flower strategy in a fogsim scenario: ``[strategy] flower = "module:Class"``.

A Flower strategy (a subclass of ``flwr.serverapp.strategy.Strategy``: ``FedAvg``,
``FedProx``, ``FedAdam``, ``FedYogi``, a user's own subclass...) knows nothing of
budgets or fleets, so fogsim runs it the way it runs ``fedavg-feasible``: it samples
``[simulation] clients_per_round`` fleet nodes among those whose budget holds the
dense model, sends each its own message and classifies the replies (crashes, NaN,
stragglers...); the Flower strategy does the rest, for real:

- **configure**: each round its own ``configure_train`` (and ``configure_evaluate``)
  runs on the real grid, so it sees the global model (``FedAdam`` keeps it as
  ``current_arrays``) and writes its config (``FedProx``'s ``proximal-mu``, which
  fogsim's client applies). fogsim sends the arrays and config it produced to the
  fleet nodes it sampled, with fogsim's own keys added (``fogsim.flower.wire``).
- **aggregate**: its ``aggregate_train`` merges the good replies, each a plain
  Flower reply (one ``arrays`` record, one ``metrics`` record with
  ``num-examples``); its ``aggregate_evaluate`` merges client evaluations.

The new global model must have the old one's keys and shapes; it is cast back to the
old dtypes (``FedAdam`` and ``FedYogi`` compute in float64: sent back as it is, every
client's float32 data would meet a float64 model in round 2). A strategy that raises
or returns another model ends the run with :class:`RunFailed` naming it.

Flower's own sampling parameters (``fraction_train``, ``min_train_nodes``, ...) and
record keys are fogsim's business here (``[simulation]``), so ``params`` naming them
are refused, naming the field that sets them. The strategy is built with keyword
arguments only: never the scenario or the fleet.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pickle
import sys
import typing
from collections.abc import Iterable
from typing import Any

import numpy as np
import pydantic
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fogsim.device.arch import Arch
from fogsim.device.factory import FactoryArch
from fogsim.device.memory import proximal_anchor_bytes
from fogsim.fleet import Fleet
from fogsim.flower import wire
from fogsim.scenario import Scenario
from fogsim.strategies.base import FogStrategy
from fogsim.strategies.fedavg import FedAvgFeasible
from fogsim.strategies.registry import StrategyError
from fogsim.study.results import RunFailed

# Flower keyword arguments fogsim sets itself, and the scenario field that does it
OWNED = {
    "fraction_train": "simulation.clients_per_round",
    "fraction_evaluate": "simulation.evaluate_clients",
    "min_train_nodes": "simulation.clients_per_round",
    "min_evaluate_nodes": "simulation.evaluate_clients",
    "min_available_nodes": "simulation.clients_per_round",
    "weighted_by_key": "fogsim's clients ('num-examples')",
    "arrayrecord_key": "fogsim's clients ('arrays')",
    "configrecord_key": "fogsim's clients ('config')",
}
# what fogsim passes so that Flower's own sampling takes every mailbox and never waits
SAMPLING = {
    "fraction_train": 1.0,
    "fraction_evaluate": 1.0,
    "min_train_nodes": 1,
    "min_evaluate_nodes": 1,
    "min_available_nodes": 1,
}


def flower_class(ref: str) -> type[Strategy]:
    """The class ``ref`` (``"module:Class"``) names, imported from the current
    directory too (a user's strategy lives beside their scenario)."""
    module, _, attr = ref.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise StrategyError(f"strategy.flower: {ref!r}: {e}") from None
    if not (inspect.isclass(cls) and issubclass(cls, Strategy)):
        raise StrategyError(
            f"strategy.flower: {ref!r} is not a Flower strategy class "
            "(a subclass of flwr.serverapp.strategy.Strategy)"
        )
    return cls


def build_flower(cls: type[Strategy], params: dict[str, Any], where: str) -> Strategy:
    """``cls(**params)``, plus the sampling arguments its constructor takes (see
    :data:`SAMPLING`); ``params`` naming what fogsim sets are refused."""
    for key in params:
        if key in OWNED:
            raise StrategyError(
                f"strategy.params: {key!r} of {where} is set by {OWNED[key]} in fogsim"
            )
    sig = inspect.signature(cls)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    if not takes_any and (unknown := [k for k in params if k not in sig.parameters]):
        allowed = [k for k in sig.parameters if k not in OWNED]
        raise StrategyError(
            f"strategy.params: {unknown[0]!r} of {where}: no such parameter; allowed: "
            f"{', '.join(allowed)}"
        )
    _check_types(cls, params, where)
    sampling = {k: v for k, v in SAMPLING.items() if takes_any or k in sig.parameters}
    try:
        inner = cls(**sampling, **params)
    except (TypeError, ValueError) as e:
        raise StrategyError(f"strategy.params: {where} with params {params}: {e}") from None
    if (mu := getattr(inner, "proximal_mu", 0)) < 0:  # Flower takes it; the client would
        # push each model away from the one received
        raise StrategyError(
            f"strategy.params: 'proximal_mu' of {where}: {mu!r}; allowed: 0 (FedAvg's "
            "update) or more"
        )
    return inner


def proximal_bytes(inner: Strategy, arch: Arch | FactoryArch) -> int:
    """FedProx's copy of the received model (``proximal_mu`` set, as Flower's
    ``FedProx`` keeps it): a node trains only if its budget holds it too."""
    return proximal_anchor_bytes(arch) if getattr(inner, "proximal_mu", 0) else 0


def _check_types(cls: type[Strategy], params: dict[str, Any], where: str) -> None:
    """Each param against its constructor's annotation (pydantic, strict: no string
    taken for a number), so a wrong type is refused at ``validate``, not when the
    strategy first aggregates, after a round's training. Params whose annotation is
    missing or not checkable (a class pydantic knows no schema for) are left to it."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that does not resolve: nothing to check against
        return
    for key, value in params.items():
        try:
            adapter = pydantic.TypeAdapter(hints[key])
        except (KeyError, pydantic.PydanticSchemaGenerationError):
            continue
        try:
            adapter.validate_python(value, strict=True)
        except pydantic.ValidationError as e:
            said = e.errors()[0]["msg"]
            raise StrategyError(
                f"strategy.params: {key!r} of {where}: {value!r}: {said}; allowed: "
                f"{getattr(hints[key], '__name__', hints[key])}"
            ) from None


class FlowerStrategy(FedAvgFeasible):
    """A Flower strategy (``inner``) on the nodes of a fleet that hold the dense model
    (see the module doc)."""

    # the plug-in aggregates: it gets every good update as a reply of its own
    sums_on_client = False
    begin_aggregate = FogStrategy.begin_aggregate
    absorb = FogStrategy.absorb
    merged = FogStrategy.merged

    def __init__(self, scenario: Scenario, fleet: Fleet, inner: Strategy, label: str) -> None:
        self.inner, self.label = inner, label  # before the admission asks extra_bytes
        super().__init__(scenario, fleet)
        mailboxes = scenario.simulation.flower_nodes
        for key in ("min_available_nodes", "min_train_nodes"):
            if getattr(inner, key, 0) > mailboxes:
                raise StrategyError(
                    f"strategy.flower: {label} has {key} = {getattr(inner, key)}, more than "
                    f"the {mailboxes} Flower nodes fogsim registers (simulation.clients_per_round)"
                )
        self.current: dict[str, np.ndarray] = {}  # the global model sent this round

    def extra_bytes(self) -> int:
        return proximal_bytes(self.inner, self.arch)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current = {k: v.numpy() for k, v in arrays.items()}
        sent = self.call("configure_train", server_round, arrays, config, grid)
        arrays, config = self._inner_payload(sent, arrays, config)
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.scenario.simulation.evaluate_clients == 0:
            return []
        sent = self.call("configure_evaluate", server_round, arrays, config, grid)
        arrays, config = self._inner_payload(sent, arrays, config)
        return super().configure_evaluate(server_round, arrays, config, grid)

    def call(self, hook: str, server_round: int, *args: Any) -> Any:
        """The Flower strategy's ``hook``; raises :class:`RunFailed` naming the strategy,
        the hook and the round if it raises (a plug-in's failure ends the run with its
        own words, not a traceback from inside Flower's engine)."""
        try:
            out = getattr(self.inner, hook)(server_round, *args)
            return list(out) if hook.startswith("configure") else out
        except Exception as e:
            raise RunFailed(
                f"strategy {self.label}: {hook} failed in round {server_round}: "
                f"{type(e).__name__}: {e}"
            ) from e

    def _inner_payload(
        self, messages: Iterable[Message], arrays: ArrayRecord, config: ConfigRecord
    ) -> tuple[ArrayRecord, ConfigRecord]:
        """The arrays and config the Flower strategy put in its messages (it sends
        every node the same); unchanged if it sent none."""
        first = next(iter(messages), None)
        if first is None:
            return arrays, config
        content = first.content
        sent_arrays = content.array_records.get(wire.ARRAYS, arrays)
        sent_config = content.config_records.get(wire.CONFIG, ConfigRecord())
        return sent_arrays, ConfigRecord({**config, **sent_config})

    def aggregate(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self.call("aggregate_train", server_round, replies)
        if arrays is None:
            return None, metrics
        return self.conform(arrays, server_round), metrics

    def conform(self, arrays: ArrayRecord, server_round: int) -> ArrayRecord:
        """The new global model with the old one's dtypes; raises :class:`RunFailed`
        if its keys or shapes differ (a model fogsim cannot evaluate or send)."""
        new = {k: v.numpy() for k, v in arrays.items()}
        bad = sorted(set(new) ^ set(self.current))
        bad += [k for k in new if k in self.current and new[k].shape != self.current[k].shape]
        if bad:
            raise RunFailed(
                f"strategy {self.label}: round {server_round}'s aggregate_train "
                f"returned a model whose arrays {bad} differ in name or shape from the "
                "global model's"
            )
        return wire.numpy_record({k: v.astype(self.current[k].dtype) for k, v in new.items()})

    def state_dict(self) -> dict[str, Any]:
        """fogsim's state and the Flower strategy's attributes that pickle (FedAdam's
        moments ``m_t``, ``v_t``...), so a resumed run goes on where it stopped."""
        own = {}
        for key, value in vars(self.inner).items():
            try:
                pickle.dumps(value)
            except Exception:  # e.g. a lambda: the constructor sets it again on resume
                continue
            own[key] = value
        return {**super().state_dict(), "flower": own}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        vars(self.inner).update(state.get("flower", {}))

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        good, _ = self.by_node(replies)
        return self.call("aggregate_evaluate", server_round, good) if good else None
