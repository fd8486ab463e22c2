"""Centralized DynHP reproduction: one model, one memory budget, a per-epoch CSV.

The budget defaults to what the *final* compressed model needs to train at
``ref_batch``: a device that could never hold the dense model trains it anyway,
starting pruned to fit and growing its batch as DynHP shrinks the network.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Annotated

import torch
import typer

from fogsim.data import DATASETS, DatasetError, load_dataset
from fogsim.dynhp import CRITERIA, DynHP, DynHPConfig, train_dynhp
from fogsim.memory import Arch, BudgetError, measure_training_memory, training_memory
from fogsim.models import FogNet, num_params
from fogsim.training import evaluate
from fogsim.units import format_bytes, parse_bytes

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


def final_model_budget(
    arch: Arch, target: float, batch: int, optimizer: str, min_width: int = 2
) -> int:
    """Bytes to train a uniformly-shrunk model of ``dense/target`` params at ``batch``."""
    dense = arch.num_params()
    widths = [*arch.channels, *arch.hidden]
    lo, hi = 0.0, 1.0
    for _ in range(40):  # width fraction giving the target size
        mid = (lo + hi) / 2
        w = [max(min_width, round(x * mid)) for x in widths]
        lo, hi = (mid, hi) if arch.with_widths(w).num_params() <= dense / target else (lo, mid)
    w = [max(min_width, round(x * lo)) for x in widths]
    return training_memory(arch.with_widths(w), batch, optimizer)


def run_centralized(
    dataset: str = "mnist",
    *,
    channels: tuple[int, ...] = (),
    hidden: tuple[int, ...] = (300, 100),
    epochs: int = 6,
    cfg: DynHPConfig | None = None,
    budget: int | None = None,
    ref_batch: int = 64,
    optimizer: str = "sgd-momentum",
    lr: float = 0.01,
    out: Path | None = None,
    seed: int = 0,
    train_limit: int | None = None,
    verbose: bool = True,
) -> list[dict[str, float]]:
    """Train one FogNet with DynHP; returns (and writes, row by row) per-epoch rows."""
    cfg = cfg or DynHPConfig()
    torch.manual_seed(seed)
    data = load_dataset(dataset)
    x, y = data.tensors(data.train_x[:train_limit], data.train_y[:train_limit])
    xt, yt = data.tensors(data.test_x, data.test_y)
    model = FogNet(channels, hidden)
    dense = num_params(model)
    if budget is None:
        budget = final_model_budget(Arch.of(model), cfg.target_compression, ref_batch, optimizer)
    dynhp = DynHP(cfg, model)
    gen = torch.Generator().manual_seed(seed)
    rows: list[dict[str, float]] = []
    handle = None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle = out.open("w", newline="")
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        handle.flush()
    opt: str | torch.optim.Optimizer = optimizer
    try:
        for epoch in range(epochs):
            t0 = time.perf_counter()
            stats = train_dynhp(
                model,
                x,
                y,
                dynhp,
                budget=budget,
                epochs=1,
                progress_range=(epoch / epochs, (epoch + 1) / epochs),
                optimizer=opt,
                lr=lr,
                generator=gen,
            )
            opt = stats.optimizer  # type: ignore[assignment]
            wall = time.perf_counter() - t0
            acc, loss = evaluate(model, xt, yt)
            batch = stats.batch[-2] if len(stats.batch) > 1 else stats.batch[-1]
            params = num_params(model)
            row = {
                "epoch": epoch + 1,
                "accuracy": round(acc, 4),
                "loss": round(loss, 4),
                "params": params,
                "compression": round(dense / params, 3),
                "batch_size": batch,
                "modelled_memory": training_memory(model, batch, optimizer),
                "measured_memory": measure_training_memory(model, batch, optimizer),
                "wall_s": round(wall, 2),
            }
            rows.append(row)
            if handle is not None:
                writer.writerow(row)
                handle.flush()
            if verbose:
                print(
                    f"epoch {row['epoch']}: acc {acc:.4f} params {params} "
                    f"({row['compression']}x) batch {batch} "
                    f"mem {format_bytes(row['modelled_memory'])} / budget "
                    f"{format_bytes(budget)} ({wall:.1f}s)"
                )
    finally:
        if handle is not None:
            handle.close()
    return rows


def dynhp_command(
    dataset: Annotated[str, typer.Option(help="mnist or fashion-mnist")] = "mnist",
    epochs: Annotated[int, typer.Option(min=1, help="passes over the training set")] = 6,
    target: Annotated[
        float, typer.Option(min=1.0, help="target compression (dense/final params)")
    ] = 10.0,
    budget: Annotated[
        str,
        typer.Option(help="memory budget, e.g. '600KiB'; 'auto' = final model at --ref-batch"),
    ] = "auto",
    out: Annotated[Path, typer.Option(help="per-epoch CSV, written row by row")] = Path(
        "results/dynhp.csv"
    ),
    model: Annotated[str, typer.Option(help="mlp (784-300-100-10) or cnn")] = "mlp",
    criterion: Annotated[str, typer.Option(help="taylor, weight-norm, weight-norm-io")] = "taylor",
    lr: Annotated[
        float, typer.Option(min=1e-9, help="SGD-momentum LR at the minimum batch")
    ] = 0.01,
    ref_batch: Annotated[int, typer.Option(min=1, help="batch for the 'auto' budget")] = 64,
    dynamic_batch: Annotated[bool, typer.Option(help="grow the batch as the net shrinks")] = True,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Train one model centrally with DynHP under a memory budget; write a per-epoch CSV.

    Example: ``fogsim dynhp --dataset fashion-mnist --epochs 6 --target 10
    --budget auto --out results/dynhp_fmnist.csv``
    """
    from fogsim.cli import fail  # the CLI's one error path (imported late: cli imports us)

    for option, value, allowed in (
        ("dataset", dataset, DATASETS),
        ("model", model, ("mlp", "cnn")),
        ("criterion", criterion, CRITERIA),
    ):
        if value not in allowed:
            fail(f"--{option} {value!r}: allowed: {', '.join(allowed)}")
    try:
        size = None if budget == "auto" else parse_bytes(budget)
    except ValueError as e:
        fail(f"--budget {budget!r}: {e}; e.g. 600KiB, or auto")
    channels, hidden = ((), (300, 100)) if model == "mlp" else ((16, 32), (128,))
    cfg = DynHPConfig(target_compression=target, criterion=criterion, dynamic_batch=dynamic_batch)
    try:
        run_centralized(
            dataset,
            channels=channels,
            hidden=hidden,
            epochs=epochs,
            cfg=cfg,
            budget=size,
            ref_batch=ref_batch,
            lr=lr,
            out=out,
            seed=seed,
        )
    except (BudgetError, DatasetError, OSError) as e:  # budget too small, data, --out
        fail(f"fogsim dynhp: {e}")
