"""DynHP: dynamic hard pruning during training, with memory-driven batch sizing.

DynHP (Valerio, Nardini, Passarella, Perego; arXiv 2011.08545) prunes neurons of a
network *while it trains*, physically shrinking it, and reuses the memory freed to
grow the mini-batch, so a memory-constrained device can train a model that only
fits once compressed. Only the abstract is public, so the rules below are our
choices; each is a :class:`DynHPConfig` field.

- **Criterion** (``criterion``): ``taylor`` (default) is the first-order Taylor
  estimate of the loss change when a neuron is removed, ``|sum over the batch of
  activation x gradient|`` for its pre-activation. We compute it without hooks via
  the identity ``sum_b z_b dL/dz_b = w . dL/dw + b . dL/db`` for the producer's row
  (Molchanov et al. 2019 group Taylor): it is exact, costs no extra activation
  memory (hooks would keep pre-activations alive and break the memory budget),
  and ``z * dL/dz`` equals the post-ReLU ``a * dL/da`` elementwise. Alternatives:
  ``weight-norm`` (L2 norm of the incoming row and bias) and ``weight-norm-io``
  (incoming x outgoing norm). Scores are smoothed with an EMA (``ema``) and divided
  by the group mean before ranking, so groups of different fan-in compare.
- **Candidates and gate**: at each check the scheduler wants the parameter count at
  ``target_params(progress)``. Candidates are the lowest normalised scores, taken
  greedily until the exact parameter count of the shrunk widths meets the target
  (no group below ``min_width``; the output layer is never a group). A candidate is
  removed only after it has been a candidate at ``patience`` consecutive checks, so
  noisy scores do not kill neurons. At ``progress >= end`` the gate is bypassed:
  the final count must meet the target (compression >= target, with the minimal
  greedy removal: one neuron fewer would miss it).
- **Schedule**: Zhu & Gupta's cubic ramp of the *parameter count*, from dense at
  ``start`` to ``dense / target_compression`` at ``end``. Progress in [0, 1] is
  given by the caller (epoch fraction centrally; a client's participation count
  over its planned participations in federated mode).
- **Dynamic batch**: after every pruning event the batch becomes
  :func:`~fogsim.memory.max_batch_size` of the shrunk net under the budget, capped
  by ``max_batch`` and the local data size. ``lr_scaling`` rescales the LR with
  ``batch / lr_base_batch``: ``linear`` (Goyal et al.), ``sqrt`` (Krizhevsky; the
  variance-preserving choice, default) or ``none``.
- **Budget start**: if the budget cannot hold the model at ``min_batch``, it is
  first pruned by the same criterion (weights only, before any gradient) until it
  does; so the budget holds at every step (modelled memory, see ``memory.py``).

The state (scores, gate streaks, ``kept``) is kept in *global* neuron indices and
exported as plain numpy (:meth:`DynHP.state_dict`), so a federated client can carry
it between rounds for any sub-model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fogsim.memory import Arch, BudgetError, max_batch_size, optimizer_kind, training_memory
from fogsim.models import FogNet
from fogsim.pruning import Kept, full_kept, remove_neurons
from fogsim.training import make_optimizer

CRITERIA = ("taylor", "weight-norm", "weight-norm-io")
LR_SCALINGS = ("none", "linear", "sqrt")


@dataclass
class DynHPConfig:
    target_compression: float = 10.0
    start: float = 0.0  # progress where pruning starts
    end: float = 0.7  # progress where the target must be met
    criterion: str = "taylor"
    ema: float = 0.9
    patience: int = 3
    check_every: int = 10  # steps between pruning checks
    min_width: int = 2
    min_batch: int = 16
    max_batch: int = 256
    dynamic_batch: bool = True
    lr_scaling: str = "sqrt"
    lr_base_batch: int | None = None  # batch the LR is tuned for; default min_batch

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, not {self.criterion!r}")
        if self.lr_scaling not in LR_SCALINGS:
            raise ValueError(f"lr_scaling must be one of {LR_SCALINGS}")
        if not 0 <= self.start < self.end <= 1:
            raise ValueError("need 0 <= start < end <= 1")
        if self.target_compression < 1:
            raise ValueError("target_compression must be >= 1")


def cubic_target(dense: int, final: float, start: float, end: float, progress: float) -> int:
    """Zhu & Gupta cubic ramp of the parameter count from ``dense`` to ``final``."""
    if progress <= start:
        return dense
    if progress >= end:
        return int(math.floor(final))
    frac = (progress - start) / (end - start)
    return int(math.floor(final + (dense - final) * (1 - frac) ** 3))


class DynHP:
    """Scores, schedule and gate of one model (global-index state, see module doc)."""

    def __init__(
        self,
        cfg: DynHPConfig,
        global_arch: Arch | FogNet,
        kept: Kept | None = None,
    ) -> None:
        self.cfg = cfg
        self.global_arch = Arch.of(global_arch)
        widths = [*self.global_arch.channels, *self.global_arch.hidden]
        self.kept: Kept = [np.asarray(k) for k in kept] if kept else full_kept(widths)
        self.score = [np.zeros(w) for w in widths]
        self.streak = [np.zeros(w, dtype=np.int64) for w in widths]
        self.seen = [np.zeros(w, dtype=bool) for w in widths]
        self.dense_params = self.global_arch.num_params()

    # ---- schedule -------------------------------------------------------------
    def target_params(self, progress: float) -> int:
        c = self.cfg
        final = self.dense_params / c.target_compression
        return cubic_target(self.dense_params, final, c.start, c.end, progress)

    # ---- scoring ----------------------------------------------------------------
    @torch.no_grad()
    def raw_scores(self, model: FogNet) -> list[np.ndarray]:
        """Per-group, per-local-neuron importance before smoothing."""
        out = []
        for g in range(len(model.widths)):
            prod, cons = model.producer(g), model.consumer(g)
            w = prod.weight.reshape(prod.weight.shape[0], -1)
            if self.cfg.criterion == "taylor":
                if prod.weight.grad is None:
                    out.append(None)
                    continue
                gw = prod.weight.grad.reshape(w.shape)
                s = torch.bmm(w.unsqueeze(1), gw.unsqueeze(2)).reshape(-1)
                s = (s + prod.bias * prod.bias.grad).abs()
            else:
                s = torch.sqrt((w * w).sum(1) + prod.bias**2)
                if self.cfg.criterion == "weight-norm-io":
                    span = model.consumer_span(g)
                    cw = cons.weight.reshape(cons.weight.shape[0], -1, span)
                    if isinstance(cons, nn.Conv2d):
                        cw = cons.weight.transpose(0, 1).reshape(cons.weight.shape[1], -1)
                        s = s * torch.sqrt((cw * cw).sum(1))
                    else:
                        s = s * torch.sqrt((cw * cw).sum((0, 2)))
            out.append(s.double().numpy())
        return out

    def update_scores(self, model: FogNet) -> None:
        """Fold the current scores into the EMA (call after backward, before step)."""
        for g, s in enumerate(self.raw_scores(model)):
            if s is None:
                continue
            k = self.kept[g]
            fresh = ~self.seen[g][k]
            prev = self.score[g][k]
            self.score[g][k] = np.where(fresh, s, self.cfg.ema * prev + (1 - self.cfg.ema) * s)
            self.seen[g][k] = True

    def local_scores(self, model: FogNet) -> list[np.ndarray]:
        """Smoothed scores, normalised by group mean; weight-norm where none seen yet."""
        fallback = None
        out = []
        for g, k in enumerate(self.kept):
            s = self.score[g][k]
            if not self.seen[g][k].all():
                if fallback is None:
                    fallback = DynHP(
                        DynHPConfig(criterion="weight-norm"), self.global_arch
                    ).raw_scores(model)
                s = np.where(self.seen[g][k], s, fallback[g])
            out.append(s / max(float(np.mean(s)), 1e-12))
        return out

    # ---- candidate selection ------------------------------------------------------
    def _greedy(self, model: FogNet, done) -> list[np.ndarray]:  # noqa: ANN001
        """Lowest-score neurons (local indices per group) until ``done(widths)``."""
        arch = Arch.of(model)
        widths = list(model.widths)
        chosen: list[list[int]] = [[] for _ in widths]
        if done(arch.with_widths(widths)):
            return [np.array(c, dtype=np.int64) for c in chosen]
        scores = self.local_scores(model)
        order = sorted(
            ((float(s), g, i) for g, sg in enumerate(scores) for i, s in enumerate(sg)),
        )
        picked: list[tuple[int, int]] = []
        for _, g, i in order:
            if widths[g] <= self.cfg.min_width:
                continue
            widths[g] -= 1
            picked.append((g, i))
            if done(arch.with_widths(widths)):
                break
        # minimality: give back (most important first) any neuron the target can spare,
        # e.g. a cheap conv channel made unnecessary by a later, costlier pick
        for g, i in reversed(picked[:-1]):
            widths[g] += 1
            if done(arch.with_widths(widths)):
                continue
            widths[g] -= 1
            chosen[g].append(i)
        if picked:
            chosen[picked[-1][0]].append(picked[-1][1])
        return [np.array(sorted(c), dtype=np.int64) for c in chosen]

    def _remove(
        self, model: FogNet, drop: list[np.ndarray], optimizer: torch.optim.Optimizer | None
    ) -> int:
        removed = 0
        for g, d in enumerate(drop):
            if len(d) == 0:
                continue
            gone = self.kept[g][d]
            self.score[g][gone] = 0.0
            self.streak[g][gone] = 0
            self.seen[g][gone] = False
            keep = np.setdiff1d(np.arange(model.widths[g]), d)
            remove_neurons(model, g, keep, optimizer, self.kept)
            removed += len(d)
        return removed

    def check(
        self,
        model: FogNet,
        progress: float,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> int:
        """One pruning check at ``progress``; returns the number of neurons removed."""
        target = self.target_params(progress)
        cand = self._greedy(model, lambda a: a.num_params() <= target)
        force = progress >= self.cfg.end
        drop = []
        for g, c in enumerate(cand):
            glob = self.kept[g][c]
            hit = np.zeros(len(self.streak[g]), dtype=bool)
            hit[glob] = True
            self.streak[g] = np.where(hit, self.streak[g] + 1, 0)
            drop.append(c if force else c[self.streak[g][glob] >= self.cfg.patience])
        return self._remove(model, drop, optimizer)

    def fit_to_budget(
        self,
        model: FogNet,
        budget: int,
        optimizer: str | torch.optim.Optimizer,
        batch: int | None = None,
    ) -> int:
        """Prune until training at ``batch`` (default ``min_batch``) fits ``budget``."""
        batch = batch or self.cfg.min_batch
        kind = optimizer_kind(optimizer)

        def fits(a: Arch) -> bool:
            return training_memory(a, batch, kind) <= budget

        drop = self._greedy(model, fits)
        opt = optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
        removed = self._remove(model, drop, opt)
        if not fits(Arch.of(model)):
            need = training_memory(Arch.of(model).with_widths([1] * len(model.widths)), batch, kind)
            raise BudgetError(
                f"memory budget {budget} B cannot hold even the narrowest model at batch "
                f"{batch} (min_width {self.cfg.min_width}); it needs more than {need} B"
            )
        return removed

    # ---- serialisation -----------------------------------------------------------
    def state_dict(self) -> dict[str, object]:
        """Plain numpy/float state, in global neuron indices."""
        return {
            "kept": [k.copy() for k in self.kept],
            "score": [s.copy() for s in self.score],
            "streak": [s.copy() for s in self.streak],
            "seen": [s.copy() for s in self.seen],
            "dense_params": float(self.dense_params),
        }

    def load_state_dict(self, state: dict[str, object], kept: Kept | None = None) -> None:
        """Restore; ``kept`` overrides the stored map (e.g. a new sub-model)."""
        self.score = [np.array(s, dtype=float) for s in state["score"]]  # type: ignore[union-attr]
        self.streak = [np.array(s, dtype=np.int64) for s in state["streak"]]  # type: ignore[union-attr]
        self.seen = [np.array(s, dtype=bool) for s in state["seen"]]  # type: ignore[union-attr]
        self.dense_params = int(state["dense_params"])  # type: ignore[arg-type]
        src = kept if kept is not None else state["kept"]
        self.kept = [np.asarray(k, dtype=np.int64) for k in src]  # type: ignore[union-attr]


@dataclass
class TrainStats:
    """Per-step records of one :func:`train_dynhp` call."""

    loss: list[float] = field(default_factory=list)
    params: list[int] = field(default_factory=list)
    batch: list[int] = field(default_factory=list)
    memory: list[int] = field(default_factory=list)  # modelled bytes at that step
    progress: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    pruned: int = 0
    wall_s: float = 0.0
    optimizer: torch.optim.Optimizer | None = None

    @property
    def mean_loss(self) -> float:
        w = np.asarray(self.batch, dtype=float)
        return float(np.dot(self.loss, w) / max(w.sum(), 1))


def _lr_scale(cfg: DynHPConfig, batch: int) -> float:
    ratio = batch / (cfg.lr_base_batch or cfg.min_batch)
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[cfg.lr_scaling]


def choose_batch(
    model: FogNet, cfg: DynHPConfig, budget: int | None, optimizer: str, n_local: int
) -> int:
    """The batch DynHP trains at now: budget-limited, capped by max_batch and data."""
    cap = min(cfg.max_batch, n_local)
    if budget is None:
        return max(1, min(cfg.min_batch, n_local))
    return max(1, max_batch_size(model, budget, optimizer, cap=cap))


def train_dynhp(
    model: FogNet,
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
    batch: int | None = None,
    generator: torch.Generator | None = None,
) -> TrainStats:
    """Train ``model`` in place with DynHP for ``epochs`` passes over ``x, y``.

    Progress runs linearly from ``progress_range[0]`` to ``[1]`` over the samples
    seen. ``optimizer`` is a name (built here with ``lr``) or an existing optimizer
    to continue (its param_groups' ``lr`` is the base LR; it is rescaled with the
    batch). ``batch`` fixes the batch when ``cfg.dynamic_batch`` is off (default:
    the budget's batch at the start). Returns per-step stats; the optimizer used is
    ``stats.optimizer`` so callers can continue it.
    """
    cfg = dynhp.cfg
    t0 = time.perf_counter()
    kind = optimizer_kind(optimizer)
    stats = TrainStats()
    if budget is not None and training_memory(model, cfg.min_batch, kind) > budget:
        stats.pruned += dynhp.fit_to_budget(model, budget, optimizer)
    if isinstance(optimizer, torch.optim.Optimizer):
        opt = optimizer
        base_lr = opt.param_groups[0].get("base_lr", opt.param_groups[0]["lr"])
    else:
        name = "adam" if kind == "adam" else "sgd"
        opt = make_optimizer(
            name, model.parameters(), lr, momentum if kind == "sgd-momentum" else 0
        )
        base_lr = lr
    for group in opt.param_groups:
        group["base_lr"] = base_lr
    stats.optimizer = opt
    n = len(x)
    if cfg.dynamic_batch or batch is None:
        bs = choose_batch(model, cfg, budget, kind, n)
    else:
        bs = batch

    def set_lr(b: int) -> float:
        new = base_lr * _lr_scale(cfg, b)
        for group in opt.param_groups:
            group["lr"] = new
        return new

    cur_lr = set_lr(bs)
    total = max(1, int(round(epochs * n)))
    p0, p1 = progress_range
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    seen, step = 0, 0
    order = torch.randperm(n, generator=generator)
    pos = 0
    while seen < total:
        take = min(bs, total - seen)
        if pos + take > n:  # new epoch: fresh shuffle (a short tail batch is dropped)
            order, pos = torch.randperm(n, generator=generator), 0
        idx = order[pos : pos + take]
        pos += take
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        dynhp.update_scores(model)
        opt.step()
        seen += take
        step += 1
        stats.loss.append(loss.item())
        stats.params.append(sum(p.numel() for p in model.parameters()))
        stats.batch.append(take)
        stats.memory.append(training_memory(model, take, kind))
        stats.lr.append(cur_lr)
        progress = p0 + (p1 - p0) * seen / total
        stats.progress.append(progress)
        if step % cfg.check_every == 0 or seen >= total:
            removed = dynhp.check(model, progress, opt)
            if removed:
                stats.pruned += removed
                if cfg.dynamic_batch:
                    bs = choose_batch(model, cfg, budget, kind, n)
                    cur_lr = set_lr(bs)
    stats.wall_s = time.perf_counter() - t0
    return stats
