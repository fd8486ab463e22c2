"""Measured training memory: what one real training step of a model allocates.

The *measurement* (:func:`measure_training_memory`) runs one real
zero_grad/forward/backward/step under a :class:`TorchDispatchMode` that sees every
ATen op (autograd's backward ops included, since CPU backward runs on the calling
thread). After each op it registers the storages of its outputs with
``StorageWeakRef`` (a weak reference to the C++ ``StorageImpl``, so it notices the
exact moment autograd frees a buffer, whatever Python objects come and go) and sums
the bytes of the storages still alive. The peak of that sum, plus the tensors that
already existed (parameters, optimizer state, the batch), is the measured peak of
live tensor bytes. It does not see scratch memory that a kernel allocates and frees
inside a single op (e.g. oneDNN workspaces), nor allocator fragmentation: it measures
tensors, which is what the model models. We tried ``torch.profiler`` memory events
first; on CPU they miss blocks allocated before profiling started and are coarse.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fogsim.device.memory import optimizer_kind
from fogsim.device.models import IMAGE_SHAPE, NUM_CLASSES
from fogsim.device.training import optimizer_of_kind


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the peak of live storage bytes over the ops run under it."""

    def __init__(self, existing: list[torch.Tensor]) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        for t in existing:
            self._track(t)
        self.baseline = self._sum()
        self.peak = self.baseline

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr() if storage.nbytes() else id(storage)
        entry = self.live.get(key)
        if entry is None or entry[0].expired():
            self.live[key] = (StorageWeakRef(storage), storage.nbytes())

    def _sum(self) -> int:
        dead = [k for k, (ref, _) in self.live.items() if ref.expired()]
        for k in dead:
            del self.live[k]
        return sum(n for _, n in self.live.values())

    def __torch_dispatch__(
        self,
        func: Callable[..., Any],
        types: tuple[type, ...],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        self.peak = max(self.peak, self._sum())
        return out


def measure_training_memory(
    model: nn.Module,
    batch_size: int,
    optimizer: str | torch.optim.Optimizer = "sgd",
    lr: float = 0.01,
    seed: int = 0,
) -> int:
    """Measured peak live tensor bytes of one real training step (see module doc).

    The model is trained on a copy, so the caller's model and optimizer are untouched.
    One warm-up step first creates the optimizer state, as in steady-state training;
    gradients are then set to ``None`` so they count as allocated inside the step.
    """
    work = copy.deepcopy(model)
    work.train()
    params = list(work.parameters())
    opt = optimizer_of_kind(optimizer_kind(optimizer), params, lr)
    gen = torch.Generator().manual_seed(seed)
    in_shape = getattr(work, "in_shape", IMAGE_SHAPE)
    classes = getattr(work, "num_classes", NUM_CLASSES)
    x = torch.randn(batch_size, *in_shape, generator=gen)
    y = torch.randint(0, classes, (batch_size,), generator=gen)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(work(x), y).backward()
        opt.step()

    step()
    opt.zero_grad(set_to_none=True)
    existing = [*params, x, y]
    existing += [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    with _LiveTensorBytes(existing) as mode:
        step()
    return mode.peak
