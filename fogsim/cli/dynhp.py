"""``fogsim dynhp``: DynHP on one device, centrally, under a memory budget."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated

import typer

from fogsim.cli.common import fail
from fogsim.data import BUILT_IN_SHAPES, DatasetError
from fogsim.device.centralized import CentralizedRun, model_path, run_centralized
from fogsim.device.dynhp import CRITERIA, DynHPConfig
from fogsim.device.memory import BudgetError
from fogsim.scenario.model_section import conv_blocks
from fogsim.units import parse_bytes

MODELS = {"mlp": ((), (300, 100)), "cnn": ((16, 32), (128,))}  # (channels, hidden)


def dynhp(
    dataset: Annotated[str, typer.Option(help="mnist, fashion-mnist or digits")] = "mnist",
    epochs: Annotated[int, typer.Option(min=1, help="passes over the training set")] = 6,
    target: Annotated[
        float, typer.Option(min=1.0, help="target compression (dense/final params)")
    ] = 10.0,
    budget: Annotated[
        str,
        typer.Option(help="memory budget, e.g. '600KiB'; 'auto' = final model at --ref-batch"),
    ] = "auto",
    out: Annotated[Path, typer.Option(help="per-epoch CSV, written row by row")] = Path(
        "runs/dynhp.csv"
    ),
    model: Annotated[str, typer.Option(help="mlp (hidden 300-100) or cnn")] = "mlp",
    criterion: Annotated[str, typer.Option(help="taylor, weight-norm, weight-norm-io")] = "taylor",
    lr: Annotated[
        float, typer.Option(min=1e-9, help="SGD-momentum LR at the minimum batch")
    ] = 0.01,
    ref_batch: Annotated[int, typer.Option(min=1, help="batch for the 'auto' budget")] = 64,
    dynamic_batch: Annotated[bool, typer.Option(help="grow the batch as the net shrinks")] = True,
    seed: Annotated[int, typer.Option(min=0, max=2**63 - 1)] = 0,
    measure: Annotated[
        bool,
        typer.Option(
            help="measure each epoch's largest step from the heap (a fresh process, a few "
            "seconds an epoch); --no-measure leaves measured_memory blank"
        ),
    ] = True,
) -> None:
    """Train one model centrally with DynHP under a memory budget; write a per-epoch CSV.

    Example:

      fogsim dynhp --dataset fashion-mnist --epochs 6 --target 10 --out runs/dynhp-fmnist.csv
    """
    for option, value, allowed in (
        ("dataset", dataset, tuple(BUILT_IN_SHAPES)),  # the others need a scenario's path
        ("model", model, tuple(MODELS)),
        ("criterion", criterion, CRITERIA),
    ):
        if value not in allowed:
            fail(f"--{option} {value!r}: allowed: {', '.join(allowed)}")
    for option, number in (("target", target), ("lr", lr)):
        if not math.isfinite(number):
            fail(f"--{option} {number}: must be a finite number")
    if out.is_dir() or not os.access(out if out.exists() else _existing_parent(out), os.W_OK):
        fail(f"--out {out}: cannot write a file there")
    try:
        size = None if budget == "auto" else parse_bytes(budget)
    except ValueError as e:
        fail(f"--budget {budget!r}: {e}; e.g. 600KiB, or auto")
    channels, hidden = MODELS[model]
    _, h, w = BUILT_IN_SHAPES[dataset][0]
    if len(channels) > (blocks := conv_blocks(h, w)):
        fail(
            f"--model {model}: {len(channels)} conv blocks on {h}x{w} {dataset} images; "
            f"the memory model covers at most {blocks} there (use --model mlp)"
        )
    cfg = DynHPConfig(target_compression=target, criterion=criterion, dynamic_batch=dynamic_batch)
    run = CentralizedRun(
        dataset,
        channels,
        hidden,
        epochs=epochs,
        cfg=cfg,
        budget=size,
        ref_batch=ref_batch,
        lr=lr,
        seed=seed,
        measure=measure,
    )
    try:
        rows = run_centralized(run, out)
    except (BudgetError, DatasetError, OSError) as e:  # budget too small, data, --out
        fail(f"fogsim dynhp: {e}")
    typer.echo(f"per-epoch table in {out}, the final model in {model_path(out)}")
    if rows and rows[-1]["compression"] < target:
        typer.echo(
            f"note: target {target:g}x not reached: {rows[-1]['compression']}x at the end "
            f"(DynHP keeps at least min_width {cfg.min_width} neurons in every layer)",
            err=True,
        )


def _existing_parent(path: Path) -> Path:
    """The nearest folder above ``path`` that exists (``--out``'s parents are created)."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    return parent
