"""Neuron groups of any chain network, for Flower apps: ``fogsim.device.chain``.

The layout and the ``torch.fx`` check live in ``fogsim.device`` since the simulator's
own ``[model] factory`` models use them too (``fogsim.device.factory``), and
``fogsim.device`` sits below ``fogsim.flower`` (imports point down, never up). This
name stays, as Flower apps import it (``examples/flower_app``).
"""

from fogsim.device.chain import (
    LAYERS,
    PASS_THROUGH,
    ChainError,
    ChainLayout,
    Kept,
    Role,
    check_model,
)

__all__ = ["LAYERS", "PASS_THROUGH", "ChainError", "ChainLayout", "Kept", "Role", "check_model"]
