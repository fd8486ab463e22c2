"""Plain local training and evaluation, shared by clients, the server and benchmarks."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adam")


def release_interpreter_caches(types: bool = False) -> None:
    """Hand the memory Python keeps for reuse back to the heap, before each training
    step: its free lists of small objects (tuples, lists, dicts, floats), which only a
    full collection empties, and with ``types`` its type-attribute cache. Left alone
    they grow with the steps a round takes (an independent check measured a call
    leaving 43 KB at 1 local epoch and 170 KB at 8: a third of a 512 KiB budget, not
    charged to it); emptied each step, they hold one step's worth (~9 KB). A full
    collection over the ~230,000 objects a client process holds takes ~120 ms, so
    everything alive is frozen first: the collection then traverses nothing and only
    empties the free lists (~0.2 µs; the young generation is collected first, so a
    cycle made in the step is still found). The type cache (~3 µs to clear, then
    refilled) grows a few KB a call: cleared once a call. Objects frozen by someone
    else stay frozen."""
    gc.collect(1)
    frozen = gc.get_freeze_count()
    if not frozen:
        gc.freeze()
    gc.collect()
    if not frozen:
        gc.unfreeze()
    if types:
        sys._clear_type_cache()


def make_optimizer(
    name: str, params: Iterator[nn.Parameter], lr: float, momentum: float = 0.0
) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")


def optimizer_of_kind(
    kind: str, params: Iterator[nn.Parameter], lr: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """The optimizer the memory model calls ``kind`` (``fogsim.device.memory``):
    ``sgd``, ``sgd-momentum`` (with ``momentum``) or ``adam``."""
    if kind == "adam":
        return make_optimizer("adam", params, lr)
    return make_optimizer("sgd", params, lr, momentum if kind == "sgd-momentum" else 0.0)


def batches(
    n: int, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """Shuffled index batches covering ``range(n)`` once, each sliced when it is
    needed: ``order.split`` would build every batch's view up front, ~0.7 KB each
    alive for the whole epoch (+24 KB on a 512 KiB sensor's 540 samples at batch 16,
    beyond what its budget's memory model counts)."""
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def present_labels(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Bool mask of the labels that occur in ``y`` (HeteroFL's ``label_split``)."""
    return torch.bincount(y, minlength=num_classes)[:num_classes] > 0


def masked_logits(logits: torch.Tensor, label_mask: torch.Tensor | None) -> torch.Tensor:
    """HeteroFL's label masking: the logits of labels absent from the local data are
    set to 0 (in place: a linear layer's backward does not need its output, so this
    costs no memory), so local training does not push them down."""
    return logits if label_mask is None else logits.masked_fill_(~label_mask, 0.0)


def clip_gradients(model: nn.Module, clip: float | None) -> None:
    """Clip the gradients' global L2 norm to ``clip`` (HeteroFL and FedRolex use 1)."""
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)


def add_proximal_gradient(model: nn.Module, anchor: list[torch.Tensor], mu: float) -> None:
    """Add FedProx's gradient ``mu * (w - w_received)`` to each parameter's gradient, in
    place: no autograd graph and no temporaries, so the term costs exactly its copy of
    the received model (``anchor``), which the memory model counts
    (``fogsim.device.memory.proximal_anchor_bytes``). Put in the loss instead, autograd
    kept ``w - w_received`` per parameter and the squares' graph: ~3.7x the model's
    bytes on top of a step that the budget did not count."""
    if not anchor:
        return
    with torch.no_grad():
        for p, a in zip(model.parameters(), anchor, strict=True):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.add_(p, alpha=mu).sub_(a, alpha=mu)


def train_epochs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator | None = None,
    clip: float | None = None,
    label_mask: torch.Tensor | None = None,
    proximal_mu: float = 0.0,
) -> float:
    """Train in place with cross-entropy; returns the mean loss over the last epoch.
    ``clip``: clip the gradient norm each step; ``label_mask``: the labels whose
    logits stay (:func:`masked_logits`); ``proximal_mu``: FedProx's proximal term
    ``mu/2 * ||w - w_received||^2`` (the reported loss excludes it), applied as its
    gradient (:func:`add_proximal_gradient`). The loss is the functional
    cross-entropy: an ``nn.CrossEntropyLoss`` module's dicts held ~2.3 KB through the
    round, on top of the step the memory model counts (``fogsim.device.heap``)."""
    model.train()
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu else []
    total, count = 0.0, 0
    release_interpreter_caches(types=True)
    for _ in range(epochs):
        total, count = 0.0, 0
        for idx in batches(len(x), batch_size, generator):
            release_interpreter_caches()
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(masked_logits(model(x[idx]), label_mask), y[idx])
            loss.backward()
            add_proximal_gradient(model, anchor, proximal_mu)
            clip_gradients(model, clip)
            optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)
    return total / max(count, 1)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy loss) of ``model`` on ``x, y``."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(1) == target).sum().item()
    n = max(len(x), 1)
    return correct / n, loss_sum / n
