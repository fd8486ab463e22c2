"""The heap counter as a measurement reads it, inside the counted process: the preloaded
library's functions (``ctypes``), the bytes of what a measurement holds, and what deleting
it gives back. ``fogsim.device.heap_worker`` measures with them."""

from __future__ import annotations

import ctypes
import gc
from typing import Any

from fogsim.device.heap import HeapCounterUnavailable


class Counter:
    """The preloaded counter's functions (``ctypes``)."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(None)
        if not hasattr(lib, "heapcount_current"):
            raise HeapCounterUnavailable("libheapcount is not preloaded (LD_PRELOAD)")
        for name in ("current", "peak", "mmap_current", "mmap_peak"):
            getattr(lib, f"heapcount_{name}").restype = ctypes.c_long
        self.lib = lib

    def current(self) -> int:
        return self.lib.heapcount_current()

    def peak(self) -> int:
        return self.lib.heapcount_peak()

    def mmap(self) -> tuple[int, int]:
        return self.lib.heapcount_mmap_current(), self.lib.heapcount_mmap_peak()

    def reset_peak(self) -> None:
        self.lib.heapcount_reset_peak()


def nbytes(*tensors: Any) -> int:
    """Bytes of the tensors' storages (None skipped: a parameter with no gradient)."""
    return sum(t.untyped_storage().nbytes() for t in tensors if t is not None)


def resident_bytes(model: Any, optimizer: Any, grads: bool = True) -> int:
    """Bytes of the parameters (and gradients), optimizer state: what the memory
    model counts as existing at a moment."""
    import torch

    params = list(model.parameters())
    n = nbytes(*params) + (nbytes(*(p.grad for p in params)) if grads else 0)
    if optimizer is not None:
        state = optimizer.state.values()
        n += nbytes(*(v for s in state for v in s.values() if torch.is_tensor(v)))
    return n


def objects_bytes(counter: Counter, held: list[Any], data: int) -> int:
    """What deleting ``held`` (the caller's last references) gives back beyond
    ``data``, the bytes of its tensors: the objects the memory model counts apart
    (``memory.object_bytes``). A full collection before and after empties Python's
    free lists, so what returns is the objects' own bytes."""
    gc.collect()
    before = counter.current()
    held.clear()
    gc.collect()
    return before - counter.current() - data


def calibrate(counter: Counter) -> dict[str, int]:
    """How a known allocation moves the count: a 3 MiB tensor, then its release."""
    import torch

    gc.collect()
    before = counter.current()
    block = torch.empty(3 << 20, dtype=torch.uint8)
    allocated = counter.current() - before
    del block
    gc.collect()
    return {"allocated": allocated, "after_free": counter.current() - before}
