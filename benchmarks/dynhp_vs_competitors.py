"""DynHP against its competitors at equal data, epochs and final parameter count.

Methods (MLP 784-300-100-10, SGD momentum 0.9, LR 0.01 at batch 16 or, with
``--select-lr``, each method's own; sqrt-scaled with the batch):

- dense: the unpruned net at batch 64;
- small-dense: a net uniformly narrowed to the final size, trained from scratch;
- dynhp-shape: a net of the widths DynHP ended at (the same seed's run, on the same
  split, at DynHP's chosen LR), trained from scratch: whether DynHP's lead is the
  shape it finds or the way it trains;
- one-shot: dense for 70% of the epochs, neuron magnitude (weight-norm) pruning to
  the target in one go, fine-tune for the rest;
- iterative: magnitude pruning on DynHP's cubic schedule, no gate, fixed batch 64,
  no memory budget (Zhu & Gupta's gradual schedule, but structured, as DynHP: whole
  neurons go, so parameters and training memory count alike; unstructured weight
  pruning is not compared);
- dynhp-static: DynHP under the budget, batch fixed at its starting size (ablation);
- dynhp: DynHP (Taylor, gate, budget start, dynamic batch).

The budget is what the final-size model needs to train at batch 64. With
``--select-lr`` each method trains at its own LR from that grid: the one with the best
mean accuracy on a validation split (the last ``VALIDATION`` training images, held out;
the first three seeds), so that no method is compared at an LR tuned for another; the
final runs train on the whole training split and are scored on the test split. Every
method runs once per seed (model init and batch order); the table is mean ± std over
the seeds,
written to ``benchmarks/results/dynhp_vs_competitors.json`` (``--out`` elsewhere) and
rendered into the README by ``benchmarks/results_io.py --readme``. Memory is the
modelled training memory (``fogsim.device.memory``); the mean is over training steps.

Usage::

    python benchmarks/dynhp_vs_competitors.py                 # 5 seeds, 10x, MNIST + F-MNIST
    python benchmarks/dynhp_vs_competitors.py --quick         # 3 seeds, 15k samples, 3 epochs
    python benchmarks/dynhp_vs_competitors.py --targets 2,4,10 --seeds 0,1,2,3,4
    python benchmarks/dynhp_vs_competitors.py --jobs 2 \\
        --select-lr 0.00125,0.0025,0.005,0.01,0.02,0.04
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from typing import Any, NamedTuple

import numpy as np
import torch
from results_io import pm, renderer, stats, write

from fogsim.data import load_dataset
from fogsim.device.arch import Arch
from fogsim.device.centralized import final_model_budget, uniform_widths
from fogsim.device.dynhp import DynHP, DynHPConfig
from fogsim.device.dynhp_train import train_dynhp
from fogsim.device.models import FogNet, num_params
from fogsim.device.training import evaluate

HIDDEN = (300, 100)
OPT = "sgd-momentum"
LR, BASE_BATCH, DENSE_BATCH = 0.01, 16, 64
METHODS = ["dense", "small-dense", "dynhp-shape", "one-shot", "iterative", "dynhp-static", "dynhp"]
SHAPED = "dynhp-shape"  # trains at the widths of the same seed's "dynhp" run
VALIDATION = 10_000  # training images held out to choose each method's LR (--select-lr)


def run(
    method: str,
    data: tuple[torch.Tensor, ...],
    target: float,
    epochs: float,
    seed: int,
    knobs: dict[str, Any] | None = None,
    lr: float = LR,
    widths: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """One method, one seed: test accuracy, final size and widths, modelled memory,
    wall time (``knobs``: ``DynHPConfig`` settings changed for the two DynHP methods;
    ``lr``: the LR at batch ``BASE_BATCH``; ``widths``: ``dynhp-shape``'s)."""
    x, y, xt, yt = data
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    arch = Arch((), HIDDEN)
    budget = final_model_budget(arch, target, DENSE_BATCH, OPT)
    t0 = time.perf_counter()
    mem: list[int] = []
    common: dict[str, Any] = dict(optimizer=OPT, lr=lr, lr_batch=BASE_BATCH, generator=gen)
    plain = DynHPConfig(target_compression=1.0, dynamic_batch=False)
    if method in ("dense", "small-dense", SHAPED):
        shape = {"dense": HIDDEN, "small-dense": uniform_widths(arch, target), SHAPED: widths}
        model = FogNet((), shape[method])
        st = train_dynhp(
            model,
            x,
            y,
            DynHP(plain, model),
            budget=None,
            epochs=epochs,
            batch=DENSE_BATCH,
            **common,
        )
        mem += st.memory
    elif method == "one-shot":
        model = FogNet((), HIDDEN)
        e1 = round(0.7 * epochs * len(x)) / len(x)
        st = train_dynhp(
            model, x, y, DynHP(plain, model), budget=None, epochs=e1, batch=DENSE_BATCH, **common
        )
        mem += st.memory
        cut = DynHPConfig(target_compression=target, criterion="weight-norm", dynamic_batch=False)
        h = DynHP(cut, arch)
        h.check(model, 1.0, st.optimizer)
        st = train_dynhp(
            model,
            x,
            y,
            h,
            budget=None,
            epochs=epochs - e1,
            batch=DENSE_BATCH,
            progress_range=(1.0, 1.0),
            **{**common, "optimizer": st.optimizer},
        )
        mem += st.memory
    elif method == "iterative":
        model = FogNet((), HIDDEN)
        cfg = DynHPConfig(
            target_compression=target,
            criterion="weight-norm",
            patience=1,
            dynamic_batch=False,
            check_every=20,
        )
        st = train_dynhp(
            model,
            x,
            y,
            DynHP(cfg, arch),
            budget=None,
            epochs=epochs,
            batch=DENSE_BATCH,
            **common,
        )
        mem += st.memory
    else:
        model = FogNet((), HIDDEN)
        cfg = DynHPConfig(
            **{
                "target_compression": target,
                "dynamic_batch": method == "dynhp",
                "min_batch": BASE_BATCH,
                "max_batch": 256,
                **(knobs or {}),
            }
        )
        st = train_dynhp(model, x, y, DynHP(cfg, arch), budget=budget, epochs=epochs, **common)
        mem += st.memory
    wall = time.perf_counter() - t0
    acc, _ = evaluate(model, xt, yt)
    return {
        "accuracy": acc,
        "params": num_params(model),
        "widths": list(model.hidden),
        "peak_memory": max(mem),
        "mean_memory": float(np.mean(mem)),
        "wall_s": wall,
        "budget": budget,
    }


NOT_STATS = ("budget", "widths")


def rows_for(dataset: str, target: float, per_seed: dict[str, list[dict[str, float]]]) -> list:
    """One row per method: each figure as mean ± std over the seeds, and the accuracy
    gap to dense paired by seed (the same seed's dense run)."""
    dense = per_seed["dense"]
    rows = []
    for method, runs in per_seed.items():
        gap = [100 * (d["accuracy"] - r["accuracy"]) for d, r in zip(dense, runs, strict=True)]
        rows.append(
            {
                "dataset": dataset,
                "target": target,
                "method": method,
                **{k: stats([r[k] for r in runs]) for k in runs[0] if k not in NOT_STATS},
                "widths": [r["widths"] for r in runs],
                "compression": stats([dense[0]["params"] / r["params"] for r in runs]),
                "error_vs_dense_pt": stats(gap),
                "budget": runs[0]["budget"],
            }
        )
    return rows


@renderer("dynhp_vs_competitors")
def table(doc: dict[str, Any]) -> str:
    lines = [
        "| data set | target | method | LR | accuracy % | Δ vs dense (pt) | compression | "
        "peak memory (KiB) | mean memory (KiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        lr = r.get("lr", doc.get("settings", {}).get("lr"))
        lines.append(
            f"| {r['dataset']} | {r['target']:g}x | {r['method']} | {lr:g} | "
            f"{pm(r['accuracy'], 100)} | "
            f"{pm(r['error_vs_dense_pt'])} | {pm(r['compression'], digits=1)}x | "
            f"{pm(r['peak_memory'], 1 / 1024, 0)} | {pm(r['mean_memory'], 1 / 1024, 0)} |"
        )
    return "\n".join(lines) + "\n\n" + leads(doc)


def leads(doc: dict[str, Any], ours: str = "dynhp") -> str:
    """DynHP minus every other method, paired by seed (the same seed's data order and
    initial model for each), in pt: mean ± std and the seeds DynHP was ahead on. A
    paired difference's std leaves out what the seed moves in both; each side's own
    std keeps it, so the two views can disagree on what is "beyond one std"."""
    lines = [
        f"{ours} minus each method, paired by seed (pt; mean ± std, seeds {ours} was ahead):",
        "",
        "| data set | " + " | ".join(m for m in METHODS if m != ours) + " |",
        "|---|" + "---|" * (len(METHODS) - 1),
    ]
    for ds in dict.fromkeys(r["dataset"] for r in doc["rows"]):
        acc = {r["method"]: r["accuracy"]["values"] for r in doc["rows"] if r["dataset"] == ds}
        cells = []
        for m in METHODS:
            if m == ours or m not in acc:
                continue
            d = [100 * (a - b) for a, b in zip(acc[ours], acc[m], strict=True)]
            cells.append(f"{pm(stats(d))} ({sum(x > 0 for x in d)}/{len(d)})")
        lines.append(f"| {ds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


DATA: dict[str, tuple[torch.Tensor, ...]] = {}  # split -> tensors (forked workers share them)


def load_splits(dataset: str, limit: int | None = None) -> None:
    """Fill ``DATA``: ``"test"`` trains on the (first ``limit``) training images and
    scores on the test split; ``"validation"`` trains on all of those but the last
    ``VALIDATION`` and scores on them (for choices that must not see the test split)."""
    d = load_dataset(dataset)
    x, y = d.tensors(d.train_x[:limit], d.train_y[:limit])
    DATA["test"] = (x, y, *d.tensors(d.test_x, d.test_y))
    DATA["validation"] = (x[:-VALIDATION], y[:-VALIDATION], x[-VALIDATION:], y[-VALIDATION:])


class Job(NamedTuple):
    """One :func:`run`'s arguments, its data named by the split's key in ``DATA``."""

    split: str
    method: str
    target: float
    epochs: float
    seed: int
    lr: float
    knobs: dict[str, Any] | None = None
    widths: tuple[int, ...] | None = None


def _job(job: Job) -> dict[str, Any]:
    torch.set_num_threads(1)
    data = DATA[job.split]
    return run(job.method, data, job.target, job.epochs, job.seed, job.knobs, job.lr, job.widths)


def run_all(jobs: list[Job], workers: int) -> list[dict]:
    """Every job's :func:`run`, in order, on ``workers`` forked processes (1: here);
    a job's split names its data in ``DATA``."""
    if workers == 1:
        return [_job(j) for j in jobs]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(_job, jobs, chunksize=1)


def validation_runs(
    cases: list[tuple[str, float]],
    grid: list[float],
    epochs: float,
    seeds: list[int],
    workers: int,
    widths: dict[tuple[float, int], tuple[int, ...]] | None = None,
) -> dict[tuple[str, float], dict[float, list[dict[str, Any]]]]:
    """Per (method, target), its runs on the validation split at every LR of ``grid``,
    one per seed (``widths``: ``dynhp-shape``'s per (target, seed))."""
    jobs = [
        Job("validation", m, t, epochs, s, lr, widths=(widths or {}).get((t, s)))
        for m, t in cases
        for lr in grid
        for s in seeds
    ]
    done = iter(run_all(jobs, workers))
    return {case: {lr: [next(done) for _ in seeds] for lr in grid} for case in cases}


def final_runs(
    cases: list[tuple[str, float]],
    lr_of: dict[tuple[str, float], float],
    epochs: float,
    seeds: list[int],
    workers: int,
    widths: dict[tuple[float, int], tuple[int, ...]] | None = None,
) -> dict[tuple[str, float], list[dict[str, Any]]]:
    """Per (method, target), its runs on the test split at its LR, one per seed."""
    jobs = [
        Job("test", m, t, epochs, s, lr_of[(m, t)], widths=(widths or {}).get((t, s)))
        for m, t in cases
        for s in seeds
    ]
    done = iter(run_all(jobs, workers))
    return {case: [next(done) for _ in seeds] for case in cases}


def widths_by(
    runs: dict[float, list[dict[str, Any]]], seeds: list[int]
) -> dict[tuple[float, int], tuple[int, ...]]:
    """The final widths of runs given per target, one per seed, by (target, seed)."""
    return {
        (t, s): tuple(r["widths"])
        for t, done in runs.items()
        for s, r in zip(seeds, done, strict=True)
    }


def best_lr(runs: dict[float, list[dict[str, Any]]]) -> float:
    """The LR whose runs have the best mean validation accuracy."""
    return max(runs, key=lambda lr: np.mean([r["accuracy"] for r in runs[lr]]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 seeds, 15k samples, 3 epochs")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--datasets", default="mnist,fashion-mnist")
    ap.add_argument("--targets", default="10", help="e.g. 2,4,10")
    ap.add_argument("--seeds", default=None, help="comma-separated (default 0..4; quick 0..2)")
    ap.add_argument("--select-lr", help="LRs to choose each method's from, e.g. 0.005,0.01")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (1 torch thread each)")
    ap.add_argument("--out", default="dynhp_vs_competitors", help="results file name")
    args = ap.parse_args()
    epochs = args.epochs or (3 if args.quick else 6)
    seeds = [int(s) for s in (args.seeds or ("0,1,2" if args.quick else "0,1,2,3,4")).split(",")]
    grid = [float(v) for v in args.select_lr.split(",")] if args.select_lr else []
    limit = 15000 if args.quick else None
    targets = [float(t) for t in args.targets.split(",")]
    # dynhp-shape trains at the widths its seed's dynhp run ended at: it runs second
    cases = [("dense", 1.0)] + [(m, t) for t in targets for m in METHODS[1:] if m != SHAPED]
    shaped = [(SHAPED, t) for t in targets]
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    for ds in args.datasets.split(","):
        load_splits(ds, limit)
        # every method but dynhp-shape: its validation runs at each LR, then the test runs
        picked = validation_runs(cases, grid, epochs, seeds[:3], args.jobs) if grid else {}
        lr_of = {c: best_lr(picked[c]) if grid else LR for c in cases}
        per_case = final_runs(cases, lr_of, epochs, seeds, args.jobs)
        # then dynhp-shape, on each split at the widths its seed's dynhp run ended at
        if grid:
            ended = {t: picked[("dynhp", t)][lr_of[("dynhp", t)]] for t in targets}
            picked |= validation_runs(
                shaped, grid, epochs, seeds[:3], args.jobs, widths_by(ended, seeds[:3])
            )
        lr_of |= {c: best_lr(picked[c]) if grid else LR for c in shaped}
        ended = {t: per_case[("dynhp", t)] for t in targets}
        per_case |= final_runs(shaped, lr_of, epochs, seeds, args.jobs, widths_by(ended, seeds))
        for target in targets:
            per_seed = {
                m: per_case[("dense", 1.0) if m == "dense" else (m, target)] for m in METHODS
            }
            for row in rows_for(ds, target, per_seed):
                case = ("dense", 1.0) if row["method"] == "dense" else (row["method"], target)
                row["lr"] = lr_of[case]
                row["lr_validation"] = {
                    str(v): stats([r["accuracy"] for r in runs])
                    for v, runs in picked.get(case, {}).items()
                }
                rows.append(row)
                print(f"{ds} {target:g}x {row['method']} (LR {row['lr']:g}): accuracy "
                      f"{pm(row['accuracy'], 100)} %", flush=True)  # fmt: skip
    settings = {"epochs": epochs, "train_limit": limit, "hidden": HIDDEN, "lr": grid or LR}
    path = write(args.out, rows, seeds, settings=settings | {"validation": VALIDATION})
    print(table({"rows": rows}))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
