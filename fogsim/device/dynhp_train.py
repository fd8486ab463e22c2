"""DynHP's training loop: train, score, prune on the schedule, grow the batch.

:func:`train_dynhp` runs DynHP (``fogsim.device.dynhp``) on one model for some
epochs: every step is an ordinary SGD/Adam step whose gradients also feed the neuron
scores; every ``check_every`` steps a pruning check may remove neurons, after which
the batch grows into the memory freed (``dynamic_batch``) and the LR follows it.
Centrally (``fogsim dynhp``) one call is an epoch; on a federated client one call is
a node's round.
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from fogsim.device.arch import Arch
from fogsim.device.dynhp import DynHP, DynHPConfig
from fogsim.device.factory import FactoryArch
from fogsim.device.memory import max_batch_size, optimizer_kind, training_memory
from fogsim.device.training import (
    clip_gradients,
    masked_logits,
    optimizer_of_kind,
    release_interpreter_caches,
)


def _floats() -> array:
    return array("d")


def _ints() -> array:
    return array("q")


@dataclass
class TrainStats:
    """What one :func:`train_dynhp` call did: running totals, and with ``per_step``
    per-step records in typed arrays, 8 B a figure (a list's figures are Python
    objects, ~3-4x that). A federated client keeps the totals only: the records grow
    with its data (48 B a step: 17.5 KB on a 5,840-sample node at batch 16) in the
    memory its budget covers. The widths are kept for the step of largest memory only
    (``fogsim dynhp``'s CSV measures it)."""

    per_step: bool = True
    steps: int = 0
    samples: int = 0
    loss_sum: float = 0.0  # sum over steps of loss x batch
    max_batch: int = 0
    max_memory: int = 0
    loss: array = field(default_factory=_floats)
    params: array = field(default_factory=_ints)
    batch: array = field(default_factory=_ints)
    memory: array = field(default_factory=_ints)  # modelled bytes at that step
    progress: array = field(default_factory=_floats)
    lr: array = field(default_factory=_floats)
    peak_step: int = -1  # the first step of largest modelled memory
    peak_widths: tuple[int, ...] = ()  # ... and its widths
    pruned: int = 0
    wall_s: float = 0.0
    optimizer: torch.optim.Optimizer | None = None

    def record(
        self,
        loss: float,
        model: nn.Module,
        shape: Arch | FactoryArch,
        batch: int,
        optimizer: str,
        lr: float,
        progress: float,
        held: int = 0,
    ) -> None:
        """One step's figures (memory: modelled at this step's widths, ``shape``, and
        batch, plus ``held``, what DynHP itself holds)."""
        memory = training_memory(shape, batch, optimizer) + held
        if self.peak_step < 0 or memory > self.max_memory:
            self.peak_step, self.peak_widths = self.steps, tuple(shape.widths)
        self.steps += 1
        self.samples += batch
        self.loss_sum += loss * batch
        self.max_batch, self.max_memory = max(self.max_batch, batch), max(self.max_memory, memory)
        if self.per_step:
            self.loss.append(loss)
            self.params.append(sum(p.numel() for p in model.parameters()))
            self.batch.append(batch)
            self.memory.append(memory)
            self.lr.append(lr)
            self.progress.append(progress)

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.samples, 1)


def lr_scale(scaling: str, batch: int, lr_batch: int) -> float:
    """LR multiplier at ``batch`` for an LR tuned at ``lr_batch`` (``lr_scaling``)."""
    ratio = batch / lr_batch
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[scaling]


def choose_batch(
    shape: Arch | FactoryArch, cfg: DynHPConfig, budget: int | None, optimizer: str, n_local: int
) -> int:
    """The batch DynHP trains at now: budget-limited, capped by max_batch and data."""
    cap = min(cfg.max_batch, n_local)
    if budget is None:
        return max(1, min(cfg.min_batch, n_local))
    return max(1, max_batch_size(shape, budget, optimizer, cap=cap))


class _Shuffle:
    """Index batches of a fresh permutation per epoch; a batch that would run past the
    end starts the next epoch instead (the short tail is dropped)."""

    def __init__(self, n: int, generator: torch.Generator | None) -> None:
        self.n, self.generator = n, generator
        self.order, self.pos = torch.randperm(n, generator=generator), 0

    def take(self, k: int) -> torch.Tensor:
        if self.pos + k > self.n:
            self.order, self.pos = torch.randperm(self.n, generator=self.generator), 0
        self.pos += k
        return self.order[self.pos - k : self.pos]


def _optimizer(
    model: nn.Module, optimizer: str | torch.optim.Optimizer, lr: float, momentum: float
) -> tuple[torch.optim.Optimizer, float]:
    """The optimizer to train with and its base LR (the LR at ``lr_batch``): a name is
    built here at ``lr``; an optimizer is continued at the base LR it had before."""
    if isinstance(optimizer, torch.optim.Optimizer):
        group = optimizer.param_groups[0]
        opt, base_lr = optimizer, group.get("base_lr", group["lr"])
    else:
        opt, base_lr = optimizer_of_kind(optimizer, model.parameters(), lr, momentum), lr
    for group in opt.param_groups:
        group["base_lr"] = base_lr
    return opt, base_lr


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> float:
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


def train_dynhp(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    dynhp: DynHP,
    *,
    budget: int | None,
    epochs: float = 1.0,
    progress_range: tuple[float, float] = (0.0, 1.0),
    optimizer: str | torch.optim.Optimizer = "sgd-momentum",
    lr: float = 0.05,
    momentum: float = 0.9,
    lr_batch: int | None = None,
    batch: int | None = None,
    generator: torch.Generator | None = None,
    on_phase: Callable[[str, torch.optim.Optimizer | None], None] | None = None,
    clip: float | None = None,
    label_mask: torch.Tensor | None = None,
    per_step: bool = True,
) -> TrainStats:
    """Train ``model`` in place with DynHP for ``epochs`` passes over ``x, y``.

    Progress runs linearly from ``progress_range[0]`` to ``[1]`` over the samples
    seen. ``optimizer`` is a name (built here with ``lr``) or an existing optimizer
    to continue (its param_groups' ``lr`` is the base LR; it is rescaled with the
    batch). ``lr`` is tuned for batch ``lr_batch`` (default ``min_batch``) and scaled
    by ``lr_scaling`` as the batch changes. ``batch`` fixes the batch when
    ``cfg.dynamic_batch`` is off (default: the budget's batch at the start). Returns
    per-step stats; the optimizer used is ``stats.optimizer`` so callers can continue it.
    ``on_phase(phase, optimizer)`` is called as each phase starts ("fit", "step",
    "check") and at the "end": how ``fogsim.device.heap`` measures each phase.
    ``clip`` and ``label_mask`` are as in ``fogsim.device.training.train_epochs``
    (neurons are scored on the gradients before clipping). ``per_step``: keep every
    step's records in the stats, not only the totals.
    """
    cfg, kind = dynhp.cfg, optimizer_kind(optimizer)
    t0, stats, n = time.perf_counter(), TrainStats(per_step), len(x)
    phase = on_phase or (lambda name, opt: None)
    # DynHP's own arrays live beside the model: training gets the rest of the budget
    held = dynhp.held_bytes()
    budget = None if budget is None else budget - held
    # 1. a budget that cannot hold the model at min_batch: prune it to fit first
    if budget is not None and training_memory(dynhp.shape(model), cfg.min_batch, kind) > budget:
        phase("fit", optimizer if isinstance(optimizer, torch.optim.Optimizer) else None)
        stats.pruned += dynhp.fit_to_budget(model, budget, optimizer)
    opt, base_lr = _optimizer(model, optimizer, lr, momentum)
    stats.optimizer = opt

    def use_batch(bs: int) -> tuple[int, float]:
        """Train at ``bs`` from now on, with the LR scaled to it."""
        scale = lr_scale(cfg.lr_scaling, bs, lr_batch or cfg.min_batch)
        return bs, _set_lr(opt, base_lr * scale)

    fixed = not cfg.dynamic_batch and batch is not None
    bs, cur_lr = use_batch(
        batch if fixed else choose_batch(dynhp.shape(model), cfg, budget, kind, n)
    )
    total = max(1, int(round(epochs * n)))
    p0, p1 = progress_range
    shuffle = _Shuffle(n, generator)
    model.train()
    seen, step = 0, 0
    release_interpreter_caches(types=True)
    while seen < total:
        # 2. one step; neurons are scored between backward and the update
        release_interpreter_caches()
        phase("step", opt)
        idx = shuffle.take(min(bs, total - seen))
        opt.zero_grad(set_to_none=True)
        # functional: a loss module's ~2.3 KB of dicts would live through the run
        loss = nn.functional.cross_entropy(masked_logits(model(x[idx]), label_mask), y[idx])
        loss.backward()
        dynhp.update_scores(model)
        clip_gradients(model, clip)
        opt.step()
        # the gradients are spent: freed now, a pruning check holds only params and
        # optimizer state, and remove_neurons' one new tensor fits where they were
        opt.zero_grad(set_to_none=True)
        seen, step = seen + len(idx), step + 1
        progress = p0 + (p1 - p0) * seen / total
        stats.record(loss.item(), model, dynhp.shape(model), len(idx), kind, cur_lr, progress, held)
        del loss  # its graph holds the Parameters: kept, it would pin pre-pruning ones
        # 3. a pruning check on the schedule; the smaller net trains a bigger batch
        if step % cfg.check_every == 0 or seen >= total:
            phase("check", opt)
            removed = dynhp.check(model, progress, opt)
            stats.pruned += removed
            if removed and cfg.dynamic_batch:
                bs, cur_lr = use_batch(choose_batch(dynhp.shape(model), cfg, budget, kind, n))
    phase("end", opt)
    stats.wall_s = time.perf_counter() - t0
    return stats
