"""Centralized DynHP reproduction: one model, one memory budget, a per-epoch CSV.

The budget defaults to what the *final* compressed model needs to train at
``ref_batch``: a device that could never hold the dense model trains it anyway,
starting pruned to fit and growing its batch as DynHP shrinks the network.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fogsim.data import load_dataset
from fogsim.device.arch import Arch
from fogsim.device.dynhp import DynHP, DynHPConfig
from fogsim.device.dynhp_train import TrainStats, train_dynhp
from fogsim.device.heap import HeapCounterUnavailable, measure_steps
from fogsim.device.memory import largest_fraction, training_memory
from fogsim.device.models import FogNet, num_params
from fogsim.device.training import evaluate
from fogsim.units import format_bytes

COLUMNS = [
    "epoch",
    "accuracy",
    "loss",
    "params",
    "compression",
    "batch_size",
    "modelled_memory",
    "measured_memory",
    "wall_s",
]


def uniform_widths(arch: Arch, target: float, min_width: int = 2) -> list[int]:
    """Every group narrowed by one common factor (rounded, at least ``min_width``)
    until the model has at most ``dense / target`` parameters."""
    widths = arch.widths

    def shrunk(f: float) -> list[int]:
        return [max(min_width, round(w * f)) for w in widths]

    limit = arch.num_params() / target
    f = largest_fraction(lambda f: arch.with_widths(shrunk(f)).num_params() <= limit, steps=40)
    return shrunk(f)


def final_model_budget(
    arch: Arch, target: float, batch: int, optimizer: str, min_width: int = 2
) -> int:
    """Bytes to train a uniformly-shrunk model of ``dense/target`` params at ``batch``."""
    widths = uniform_widths(arch, target, min_width)
    return training_memory(arch.with_widths(widths), batch, optimizer)


@dataclass(frozen=True)
class CentralizedRun:
    """One centralized DynHP run: data, model, DynHP settings and budget."""

    dataset: str = "mnist"
    channels: tuple[int, ...] = ()
    hidden: tuple[int, ...] = (300, 100)
    epochs: int = 6
    cfg: DynHPConfig = field(default_factory=DynHPConfig)
    budget: int | None = None  # None: the final model's need at ref_batch
    ref_batch: int = 64
    optimizer: str = "sgd-momentum"
    lr: float = 0.01
    seed: int = 0
    train_limit: int | None = None  # use only the first N training images
    measure: bool = True  # each epoch's largest step from the heap (a few s an epoch)


def measured_step(arch: Arch, batch: int, optimizer: str) -> int | str:
    """A training step of ``arch`` at ``batch`` measured from the heap
    (``fogsim.device.heap``: a fresh process, a few seconds), the higher of its first
    step at that shape and a steady one; blank if the heap counter cannot run here."""
    point = {"channels": arch.channels, "hidden": arch.hidden, "in_shape": arch.in_shape}
    try:
        return measure_steps([{**point, "batch": batch, "optimizer": optimizer}])[0]["peak"]
    except HeapCounterUnavailable:
        return ""


def epoch_row(
    epoch: int, model: FogNet, stats: TrainStats, run: CentralizedRun, dense: int, acc: float
) -> dict[str, float]:
    """The CSV row of a finished epoch: test accuracy and size at its end; the batch
    and memory of its largest step (modelled, and that step's widths and batch
    measured from the heap). The epoch's last batch may be a short one, and its
    widths came after that epoch's last pruning: together they once described a step
    that never ran (a batch 46 at widths only the final 2-sample step had)."""
    peak = stats.peak_step
    batch, arch = stats.batch[peak], Arch.of(model).with_widths(stats.peak_widths)
    params = num_params(model)
    return {
        "epoch": epoch,
        "accuracy": round(acc, 4),
        "params": params,
        "compression": round(dense / params, 3),
        "batch_size": batch,
        "modelled_memory": stats.memory[peak],
        "measured_memory": measured_step(arch, batch, run.optimizer) if run.measure else "",
        "wall_s": round(stats.wall_s, 2),
    }


def run_centralized(
    run: CentralizedRun, out: Path | None = None, verbose: bool = True
) -> list[dict[str, float]]:
    """Train one FogNet with DynHP; returns (and writes to ``out``, row by row)
    per-epoch rows, and saves the final model beside them (:func:`model_path`)."""
    torch.manual_seed(run.seed)
    data = load_dataset(run.dataset)
    limit = run.train_limit
    x, y = data.tensors(data.train_x[:limit], data.train_y[:limit])
    xt, yt = data.tensors(data.test_x, data.test_y)
    model = FogNet(run.channels, run.hidden, data.image_shape)
    dense = num_params(model)
    budget = run.budget or final_model_budget(
        Arch.of(model), run.cfg.target_compression, run.ref_batch, run.optimizer
    )
    dynhp = DynHP(run.cfg, model)
    gen = torch.Generator().manual_seed(run.seed)
    rows: list[dict[str, float]] = []
    opt: str | torch.optim.Optimizer = run.optimizer
    batch = None  # without dynamic batches: the first epoch's, kept for the run
    handle = writer = None
    try:
        for epoch in range(run.epochs):
            stats = train_dynhp(
                model,
                x,
                y,
                dynhp,
                budget=budget,
                epochs=1,
                progress_range=(epoch / run.epochs, (epoch + 1) / run.epochs),
                optimizer=opt,
                lr=run.lr,
                generator=gen,
                batch=batch,
            )
            opt = stats.optimizer  # type: ignore[assignment]
            batch = None if run.cfg.dynamic_batch else stats.batch[0]
            acc, loss = evaluate(model, xt, yt)
            row = epoch_row(epoch + 1, model, stats, run, dense, acc) | {"loss": round(loss, 4)}
            rows.append(row)
            if out is not None:
                if handle is None:  # opened with the first row: a run refused at its
                    # start (a budget that holds no model) leaves an earlier file alone
                    out.parent.mkdir(parents=True, exist_ok=True)
                    handle = out.open("w", newline="")
                    writer = csv.DictWriter(handle, fieldnames=COLUMNS)
                    writer.writeheader()
                writer.writerow(row)
                handle.flush()
            if verbose:
                print(
                    f"epoch {row['epoch']}: acc {acc:.4f} params {row['params']} "
                    f"({row['compression']}x) batch {row['batch_size']} "
                    f"mem {format_bytes(row['modelled_memory'])} / budget "
                    f"{format_bytes(budget)} ({stats.wall_s:.1f}s)"
                )
    finally:
        if handle is not None:
            handle.close()
    if out is not None:  # the model the run ends with, beside its table (widths in its shapes)
        tmp = model_path(out).with_suffix(".pt.tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(model_path(out))
    return rows


def model_path(out: Path) -> Path:
    """Where a run writing its table to ``out`` saves its final model: ``<out>.pt``
    (``fogsim.device.models.model_from_state`` loads it, at its pruned widths)."""
    return out.with_suffix(".pt")
