"""fogsim: federated fog-learning simulator (DynHP on memory-budgeted fleets, Flower + Ray)."""

__version__ = "0.1.0"
