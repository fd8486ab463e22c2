"""DynHP against its competitors at equal data, epochs and final parameter count.

Methods (MLP 784-300-100-10, SGD momentum 0.9, LR 0.01 at batch 16, sqrt-scaled):

- dense: the unpruned net at batch 64;
- small-dense: a net uniformly narrowed to the final size, trained from scratch;
- one-shot: dense for 70% of the epochs, neuron magnitude (weight-norm) pruning to
  the target in one go, fine-tune for the rest;
- iterative: magnitude pruning on DynHP's cubic schedule, no gate, fixed batch 64,
  no memory budget (Zhu & Gupta style gradual pruning);
- dynhp-static: DynHP under the budget, batch fixed at its starting size (ablation);
- dynhp: DynHP (Taylor, gate, budget start, dynamic batch).

The budget is what the final-size model needs to train at batch 64. Memory is the
modelled training memory (``fogsim.device.memory``, byte-exact vs torch); the mean is over
training steps. Usage: ``python benchmarks/dynhp_vs_competitors.py [--quick]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fogsim.data import load_dataset
from fogsim.device.centralized import final_model_budget, uniform_widths
from fogsim.device.dynhp import DynHP, DynHPConfig
from fogsim.device.dynhp_train import train_dynhp
from fogsim.device.memory import Arch
from fogsim.device.models import FogNet, num_params
from fogsim.device.training import evaluate

HIDDEN = (300, 100)
OPT = "sgd-momentum"
LR, BASE_BATCH, DENSE_BATCH = 0.01, 16, 64


def run(
    method: str, data: tuple[torch.Tensor, ...], target: float, epochs: float, seed: int
) -> dict[str, float]:
    x, y, xt, yt = data
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    arch = Arch((), HIDDEN)
    budget = final_model_budget(arch, target, DENSE_BATCH, OPT)
    t0 = time.perf_counter()
    mem: list[int] = []
    common = dict(optimizer=OPT, lr=LR, lr_batch=BASE_BATCH, generator=gen)
    if method in ("dense", "small-dense"):
        widths = HIDDEN if method == "dense" else uniform_widths(arch, target)
        model = FogNet((), widths)
        cfg = DynHPConfig(target_compression=1.0, dynamic_batch=False)
        st = train_dynhp(
            model, x, y, DynHP(cfg, model), budget=None, epochs=epochs, batch=DENSE_BATCH, **common
        )
        mem += st.memory
    elif method == "one-shot":
        model = FogNet((), HIDDEN)
        cfg = DynHPConfig(target_compression=1.0, dynamic_batch=False)
        e1 = round(0.7 * epochs * len(x)) / len(x)
        st = train_dynhp(
            model, x, y, DynHP(cfg, model), budget=None, epochs=e1, batch=DENSE_BATCH, **common
        )
        mem += st.memory
        pcfg = DynHPConfig(
            target_compression=target,
            criterion="weight-norm",
            dynamic_batch=False,
        )
        h = DynHP(pcfg, arch)
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
    else:
        model = FogNet((), HIDDEN)
        if method == "iterative":
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
        else:
            cfg = DynHPConfig(
                target_compression=target,
                dynamic_batch=method == "dynhp",
                min_batch=BASE_BATCH,
                max_batch=256,
            )
            st = train_dynhp(model, x, y, DynHP(cfg, arch), budget=budget, epochs=epochs, **common)
        mem += st.memory
    wall = time.perf_counter() - t0
    acc, _ = evaluate(model, xt, yt)
    return dict(
        acc=acc,
        params=num_params(model),
        peak=max(mem),
        mean=float(np.mean(mem)),
        wall=wall,
        budget=budget,
    )


def table(dataset: str, target: float, results: dict[str, dict[str, float]]) -> str:
    dense = results["dense"]
    lines = [
        f"\n{dataset} MLP 784-300-100-10, target {target:g}x "
        f"(budget for the budgeted DynHP runs: {results['dynhp']['budget'] / 1024:.0f} KiB)",
        f"{'method':<14}{'acc %':>8}{'err Δ':>8}{'params':>9}{'comp':>7}"
        f"{'peak mem':>10}{'vs dense':>9}{'mean mem':>10}{'vs dense':>9}{'wall s':>8}",
    ]
    for name, r in results.items():
        lines.append(
            f"{name:<14}{100 * r['acc']:>8.2f}{100 * (dense['acc'] - r['acc']):>+8.2f}"
            f"{r['params']:>9}{dense['params'] / r['params']:>6.1f}x"
            f"{r['peak'] / 1024:>8.0f}Ki{100 * (r['peak'] / dense['peak'] - 1):>+8.0f}%"
            f"{r['mean'] / 1024:>8.0f}Ki{100 * (r['mean'] / dense['mean'] - 1):>+8.0f}%"
            f"{r['wall']:>8.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10x only, 15k samples, 3 epochs")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--datasets", default="mnist,fashion-mnist")
    ap.add_argument("--targets", default=None, help="e.g. 2,4,10")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    epochs = args.epochs or (3 if args.quick else 6)
    targets = [float(t) for t in (args.targets or ("10" if args.quick else "2,4,10")).split(",")]
    limit = 15000 if args.quick else None
    methods = ["small-dense", "one-shot", "iterative", "dynhp-static", "dynhp"]
    for ds in args.datasets.split(","):
        d = load_dataset(ds)
        data = (*d.tensors(d.train_x[:limit], d.train_y[:limit]), *d.tensors(d.test_x, d.test_y))
        dense = run("dense", data, 1.0, epochs, args.seed)
        for target in targets:
            results = {"dense": dense}
            for m in methods:
                results[m] = run(m, data, target, epochs, args.seed)
            print(table(ds, target, results), flush=True)


if __name__ == "__main__":
    main()
