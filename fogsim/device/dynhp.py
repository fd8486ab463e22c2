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
  :func:`~fogsim.device.memory.max_batch_size` of the shrunk net under the budget, capped
  by ``max_batch`` and the local data size. ``lr_scaling`` rescales the LR with
  ``batch / lr_batch`` (``lr_batch``: the batch the LR is tuned for): ``linear``
  (Goyal et al.), ``sqrt`` (Krizhevsky; the variance-preserving choice, default) or
  ``none``.
- **Budget start**: if the budget cannot hold the model at ``min_batch``, it is
  first pruned by the same criterion (weights only, before any gradient) until it
  does; so the budget holds at every training step. That first pruning runs on the
  model as received, so it needs the old widths' parameters plus one new tensor: more
  than the budget, as the model it starts from already is (in a federation the server
  sends a sub-model that fits instead, so devices never need it).
- **Pruning memory**: gradients are freed right after the optimizer step, so a
  pruning check holds parameters and optimizer state only, and ``remove_neurons``
  rebuilds one tensor at a time: its peak is below the training step of the widths
  before the pruning, which the batch was sized to fit.

The training loop that applies all this is ``fogsim.device.dynhp_train``.

The state (scores, gate streaks, ``kept``) is kept in *global* neuron indices and
exported as plain numpy (:meth:`DynHP.state_dict`), so a federated client can carry
it between rounds for any sub-model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from fogsim.device.arch import Arch
from fogsim.device.chain import layer_of, layout_of, widths_of
from fogsim.device.factory import FactoryArch
from fogsim.device.memory import BudgetError, dynhp_bytes, optimizer_kind, training_memory
from fogsim.device.models import FogNet
from fogsim.device.pruning import Kept, full_kept, remove_neurons

CRITERIA = ("taylor", "weight-norm", "weight-norm-io")
LR_SCALINGS = ("none", "linear", "sqrt")


class DynHPConfig(BaseModel):
    """DynHP's knobs (see the module doc), validated once: the scenario's ``[dynhp]``
    section is this plus the federation's schedule length (``fogsim.scenario``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    target_compression: float = Field(10.0, ge=1)
    start: float = Field(0.0, ge=0, lt=1, description="progress where pruning starts")
    end: float = Field(0.7, gt=0, le=1, description="progress where the target is met")
    criterion: Literal[CRITERIA] = "taylor"  # type: ignore[valid-type]
    ema: float = Field(0.9, ge=0, lt=1)
    patience: int = Field(3, ge=1)
    check_every: int = Field(10, ge=1, description="steps between pruning checks")
    min_width: int = Field(2, ge=1)
    min_batch: int = Field(16, ge=1)
    max_batch: int = Field(256, ge=1)
    dynamic_batch: bool = True
    lr_scaling: Literal[LR_SCALINGS] = "sqrt"  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _order(self) -> DynHPConfig:
        if self.start >= self.end:
            raise ValueError(f"start ({self.start}) must be below end ({self.end})")
        if self.min_batch > self.max_batch:
            raise ValueError(f"min_batch ({self.min_batch}) exceeds max_batch ({self.max_batch})")
        return self


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
        global_arch: Arch | FactoryArch | FogNet,
        kept: Kept | None = None,
        prunes: bool = True,
    ) -> None:
        """``prunes=False``: a model already at its target (a mask-union device that
        receives its prefix at its target size): no scores, streaks or checks, so none
        of their arrays is held (``held_bytes`` 0: beside them an 80 KiB digits sensor
        trained 18x6 neurons, without them 22x8); the loop still sizes the batch."""
        self.cfg, self.prunes = cfg, prunes
        self.global_arch = Arch.of(global_arch) if isinstance(global_arch, FogNet) else global_arch
        widths = list(self.global_arch.widths)
        self.kept: Kept = [np.asarray(k) for k in kept] if kept else full_kept(widths)
        # per neuron the device holds, in the order of ``kept`` (a global-width array
        # per group cost a 7-neuron digits sensor 10 KB of a 64 KiB budget: all 400 neurons)
        held = self.kept if prunes else []
        self.score = [np.zeros(len(k)) for k in held]
        self.streak = [np.zeros(len(k), dtype=np.int64) for k in held]
        self.seen = [np.zeros(len(k), dtype=bool) for k in held]
        self.dense_params = self.global_arch.num_params()
        self.fixed = False  # True: prune by the scores given (fix_scores), learn none

    def held_bytes(self) -> int:
        """Bytes this object holds now (``memory.dynhp_bytes`` at its kept widths; 0
        if it does not prune)."""
        if not self.prunes:
            return 0
        return dynhp_bytes(self.global_arch.with_widths([len(k) for k in self.kept]))

    def fix_scores(self, scores: list[np.ndarray]) -> None:
        """Prune by these per-group scores (global neuron index, higher kept longer)
        instead of learning scores from the gradients: e.g. a server's neuron order."""
        self.score = [np.asarray(s, dtype=float)[k] for s, k in zip(scores, self.kept, strict=True)]
        self.seen = [np.ones(len(k), dtype=bool) for k in self.kept]
        self.fixed = True

    def shape(self, model: nn.Module) -> Arch | FactoryArch:
        """What the memory model is asked about ``model`` (at its widths now)."""
        return self.global_arch.with_widths(widths_of(model))

    # ---- schedule -------------------------------------------------------------
    def target_params(self, progress: float) -> int:
        c = self.cfg
        final = self.dense_params / c.target_compression
        return cubic_target(self.dense_params, final, c.start, c.end, progress)

    # ---- scoring ----------------------------------------------------------------
    @torch.no_grad()
    def raw_scores(self, model: nn.Module) -> list[np.ndarray | None]:
        """Per-group, per-local-neuron importance before smoothing (None: a group with
        no gradient yet, for ``taylor``)."""
        layout, out = layout_of(model), []
        for g in range(len(layout.widths)):
            members = layout.members(g)
            if self.cfg.criterion == "taylor":
                # the group's last affine map (a batch norm after the layer, else the
                # layer): its output is the pre-activation the Taylor identity scores
                last = layer_of(model, [m for m in members if m.endswith(".weight")][-1])
                out.append(_taylor(last))
                continue
            s = _row_norms(layer_of(model, members[0]))
            if self.cfg.criterion == "weight-norm-io":
                reader, span = layout.reader(g)
                w = layer_of(model, reader).weight
                # each input column's L2 norm, reduced in place: squaring a copy of
                # the weight first was a temporary the size of the next layer's
                # weight, over the budget by that much (43 KB for a 300-100 MLP)
                if w.dim() == 4:
                    s = s * torch.linalg.vector_norm(w, dim=(0, 2, 3))
                else:
                    s = s * torch.linalg.vector_norm(w.reshape(w.shape[0], -1, span), dim=(0, 2))
            out.append(s.double().numpy())
        return out

    def update_scores(self, model: nn.Module) -> None:
        """Fold the current scores into the EMA (call after backward, before step)."""
        if self.fixed or not self.prunes:
            return
        for g, s in enumerate(self.raw_scores(model)):
            if s is None:
                continue
            prev = self.score[g]
            self.score[g] = np.where(~self.seen[g], s, self.cfg.ema * prev + (1 - self.cfg.ema) * s)
            self.seen[g][:] = True

    def local_scores(self, model: nn.Module) -> list[np.ndarray]:
        """Smoothed scores, normalised by group mean; weight-norm where none seen yet."""
        fallback = None
        out = []
        for g, s in enumerate(self.score):
            if not self.seen[g].all():
                if fallback is None:
                    fallback = DynHP(
                        DynHPConfig(criterion="weight-norm"), self.global_arch
                    ).raw_scores(model)
                s = np.where(self.seen[g], s, fallback[g])
            out.append(s / max(float(np.mean(s)), 1e-12))
        return out

    # ---- candidate selection ------------------------------------------------------
    def _greedy(
        self, model: nn.Module, done: Callable[[Arch | FactoryArch], bool]
    ) -> list[np.ndarray]:
        """Lowest-score neurons (local indices per group) until ``done(widths)``."""
        arch = self.global_arch
        widths = list(widths_of(model))
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
        self, model: nn.Module, drop: list[np.ndarray], optimizer: torch.optim.Optimizer | None
    ) -> int:
        removed = 0
        for g, d in enumerate(drop):
            if len(d) == 0:
                continue
            # a mask, not np.setdiff1d: its first call in a process sets up ~1.4 MB
            # (1.3 MB kept) in numpy, inside a device's first pruning
            keep_mask = np.ones(widths_of(model)[g], dtype=bool)
            keep_mask[d] = False
            keep = np.flatnonzero(keep_mask)
            remove_neurons(model, g, keep, optimizer, self.kept)
            self.score[g], self.streak[g] = self.score[g][keep], self.streak[g][keep]
            self.seen[g] = self.seen[g][keep]
            removed += len(d)
        return removed

    def check(
        self,
        model: nn.Module,
        progress: float,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> int:
        """One pruning check at ``progress``; returns the number of neurons removed."""
        if not self.prunes:
            return 0
        target = self.target_params(progress)
        cand = self._greedy(model, lambda a: a.num_params() <= target)
        force = progress >= self.cfg.end
        drop = []
        for g, c in enumerate(cand):
            hit = np.zeros(len(self.streak[g]), dtype=bool)
            hit[c] = True
            self.streak[g] = np.where(hit, self.streak[g] + 1, 0)
            drop.append(c if force else c[self.streak[g][c] >= self.cfg.patience])
        return self._remove(model, drop, optimizer)

    def fit_to_budget(
        self,
        model: nn.Module,
        budget: int,
        optimizer: str | torch.optim.Optimizer,
        batch: int | None = None,
    ) -> int:
        """Prune until training at ``batch`` (default ``min_batch``) fits ``budget``."""
        batch = batch or self.cfg.min_batch
        kind = optimizer_kind(optimizer)

        def fits(a: Arch | FactoryArch) -> bool:
            return training_memory(a, batch, kind) <= budget

        removed = 0
        if self.prunes:
            drop = self._greedy(model, fits)
            opt = optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
            removed = self._remove(model, drop, opt)
        if not fits(self.shape(model)):
            widths = (  # all it may prune, or the model as it is
                [min(self.cfg.min_width, len(k)) for k in self.kept]
                if self.prunes
                else list(widths_of(model))
            )
            need = training_memory(self.global_arch.with_widths(widths), batch, kind)
            raise BudgetError(
                f"memory budget {budget} B cannot hold even the narrowest model DynHP "
                f"prunes to (widths {widths}, min_width {self.cfg.min_width}) at batch "
                f"{batch}: it needs {need} B"
            )
        return removed

    # ---- serialisation -----------------------------------------------------------
    def state_dict(self) -> dict[str, object]:
        """Plain numpy/float state, in global neuron indices: one array per group of
        the global model's width (built here, after training: a neuron the device does
        not hold has score 0, streak 0 and is unseen)."""

        def spread(local: list[np.ndarray], dtype: type) -> list[np.ndarray]:
            out = [np.zeros(w, dtype=dtype) for w in self.global_arch.widths]
            for o, k, v in zip(out, self.kept, local, strict=True):
                o[k] = v
            return out

        return {
            "kept": [k.copy() for k in self.kept],
            "score": spread(self.score, float),
            "streak": spread(self.streak, np.int64),
            "seen": spread(self.seen, bool),
            "dense_params": float(self.dense_params),
        }

    def load_state_dict(self, state: dict[str, object], kept: Kept | None = None) -> None:
        """Restore from :meth:`state_dict`'s global arrays; ``kept`` overrides the
        stored map (e.g. a new sub-model). Only the held neurons' entries are kept."""
        src = kept if kept is not None else state["kept"]
        self.kept = [np.asarray(k, dtype=np.int64) for k in src]  # type: ignore[union-attr]

        def held(arrays: object, dtype: type) -> list[np.ndarray]:
            return [np.asarray(a, dtype=dtype)[k] for a, k in zip(arrays, self.kept, strict=True)]  # type: ignore[call-overload]

        self.score = held(state["score"], float)
        self.streak = held(state["streak"], np.int64)
        self.seen = held(state["seen"], bool)
        self.dense_params = int(state["dense_params"])  # type: ignore[arg-type]


def _taylor(layer: nn.Module) -> np.ndarray | None:
    """``|w . dL/dw + b . dL/db|`` per output row of ``layer`` (module doc): the Taylor
    score of its outputs; None before any gradient."""
    if layer.weight.grad is None:
        return None
    w = layer.weight.reshape(layer.weight.shape[0], -1)
    gw = layer.weight.grad.reshape(w.shape)
    s = torch.bmm(w.unsqueeze(1), gw.unsqueeze(2)).reshape(-1)
    if layer.bias is not None and layer.bias.grad is not None:
        s = s + layer.bias * layer.bias.grad
    return s.abs().double().numpy()


def _row_norms(layer: nn.Module) -> torch.Tensor:
    """L2 norm of each output row of ``layer`` and its bias entry, as batched dot
    products: ``(w * w).sum(1)`` would build a temporary the size of the weight (the
    largest tensor, for the first linear layer)."""
    w = layer.weight.reshape(layer.weight.shape[0], -1)
    rows = torch.bmm(w.unsqueeze(1), w.unsqueeze(2)).reshape(-1)
    return torch.sqrt(rows + layer.bias**2 if layer.bias is not None else rows)
