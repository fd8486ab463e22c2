"""The study of ``research_maskunion.py``: its scenarios (the fleet5 files, MLP and CNN,
and the digits) and the variants it compares, each a list of ``--set`` overrides.

A variant names what it changes from a strategy's defaults; a row of
``benchmarks/results/mask_union_vs_rivals.json`` made with it can be made again from
its name, as long as the name keeps its overrides.
"""

from __future__ import annotations

CNN = ["model.arch='cnn'", "model.hidden=[128]"]
SCENARIOS: dict[str, tuple[str, list[str]]] = {
    "mnist-iid": ("scenarios/fleet5-mnist-iid.toml", []),
    "mnist-dirichlet": ("scenarios/fleet5-mnist-dirichlet.toml", []),
    "fmnist-iid": ("scenarios/fleet5-fmnist-iid.toml", []),
    "fmnist-dirichlet": ("scenarios/fleet5-fmnist-dirichlet.toml", []),
    "mnist-iid-cnn": ("scenarios/fleet5-mnist-iid.toml", CNN),
    "mnist-dirichlet-cnn": ("scenarios/fleet5-mnist-dirichlet.toml", CNN),
    "fmnist-iid-cnn": ("scenarios/fleet5-fmnist-iid.toml", CNN),
    "fmnist-dirichlet-cnn": ("scenarios/fleet5-fmnist-dirichlet.toml", CNN),
    "digits-iid": ("scenarios/fleet5-digits-iid.toml", []),  # the strategies benchmark's too
}
VARIANTS: dict[str, list[str]] = {
    "mask-union": ["strategy.name='mask-union'"],
    "mask-union-linear": [  # the LR follows the batch linearly (the default: sqrt)
        "strategy.name='mask-union'",
        "dynhp.lr_scaling='linear'",
    ],
    "mask-union-before": [
        "strategy.name='mask-union'",
        "strategy.params.masks='own'",
        "strategy.params.target_batch='max'",
    ],
    "mask-union-care": [  # HeteroFL's reference care on mask-union (the idea)
        "strategy.name='mask-union'",
        "strategy.params.clip_grad=1.0",
        "strategy.params.label_mask=true",
    ],
    "mask-union-clip": [  # the care's gradient clipping alone, no label masking
        "strategy.name='mask-union'",
        "strategy.params.clip_grad=1.0",
    ],
    "mask-union-clip-capped": [  # clipping only on the capped devices (the narrowest)
        "strategy.name='mask-union'",
        "strategy.params.clip_grad=1.0",
        "strategy.params.clip_for='capped'",
    ],
    "mask-union-index": [  # in HeteroFL's neuron order (the default: initial weight norm)
        "strategy.name='mask-union'",
        "strategy.params.order='index'",
    ],
    "mask-union-clip-index": [
        "strategy.name='mask-union'",
        "strategy.params.clip_grad=1.0",
        "strategy.params.order='index'",
    ],
    "mask-union-as-heterofl-lr0.1": [  # HeteroFL's order and recipe: heterofl-lr0.1's runs
        "strategy.name='mask-union'",
        "strategy.params.order='index'",
        "strategy.params.clip_grad=1.0",
        "strategy.params.label_mask=true",
        "dynhp.lr_scaling='none'",
        "train.lr=0.1",
    ],
    "mask-union-care-flatlr": [  # the care, and HeteroFL's LR (not following the batch)
        "strategy.name='mask-union'",
        "strategy.params.clip_grad=1.0",
        "strategy.params.label_mask=true",
        "dynhp.lr_scaling='none'",
    ],
    "mask-union-labels": [  # the care's label masking alone, no clipping
        "strategy.name='mask-union'",
        "strategy.params.label_mask=true",
    ],
    "mask-union-batch256": [  # batches may grow to 256 as devices prune (the default: 32)
        "strategy.name='mask-union'",
        "dynhp.max_batch=256",
    ],
    "mask-union-wide8": [  # devices start wider (the prefix they train at batch 8), DynHP prunes
        "strategy.name='mask-union'",
        "strategy.params.start_batch=8",
    ],
    "mask-union-wide4": [  # ... at batch 4
        "strategy.name='mask-union'",
        "strategy.params.start_batch=4",
    ],
    "mask-union-wide8-order": [  # ... pruned by the server's neuron order: masks stay nested
        "strategy.name='mask-union'",
        "strategy.params.start_batch=8",
        "strategy.params.prune='order'",
    ],
    "mask-union-wide8-order-capped": [  # ... for the devices whose target it moves only
        "strategy.name='mask-union'",
        "strategy.params.start_batch=8",
        "strategy.params.prune='order'",
        "strategy.params.start_for='capped'",
    ],
    "mask-union-wide8-order-lr0.025-rounds15": [  # its CNN choice at HeteroFL's bytes:
        # 20 rounds of it send ~1.3x HeteroFL's bytes (up + down), 15 rounds ~1x
        "strategy.name='mask-union'",
        "strategy.params.start_batch=8",
        "strategy.params.prune='order'",
        "train.lr=0.025",
        "run.rounds=15",
    ],
    "mask-union-minbatch4": [  # every budget sized at batch 4, not 16: wider slices, no pruning
        "strategy.name='mask-union'",
        "dynhp.min_batch=4",
    ],
    "mask-union-minbatch8": [  # every budget sized at batch 8: HeteroFL-minbatch8's sizing
        "strategy.name='mask-union'",
        "dynhp.min_batch=8",
    ],
    "heterofl": ["strategy.name='heterofl'"],
    "heterofl-plain": [
        "strategy.name='heterofl'",
        "strategy.params.clip_grad=0",
        "strategy.params.label_mask=false",
    ],
    "heterofl-minbatch4": ["strategy.name='heterofl'", "dynhp.min_batch=4"],
    "heterofl-minbatch8": [  # sized at batch 8, as the capped devices' wider start is
        "strategy.name='heterofl'",
        "dynhp.min_batch=8",
    ],
    "heterofl-minbatch8-lr0.1": [  # sized at batch 8, as mask-union-wide8's devices start
        "strategy.name='heterofl'",
        "dynhp.min_batch=8",
        "train.lr=0.1",
    ],
    "heterofl-batchlr": ["strategy.name='heterofl'", "strategy.params.batch_lr=true"],
    "heterofl-plain-batchlr": [
        "strategy.name='heterofl'",
        "strategy.params.clip_grad=0",
        "strategy.params.label_mask=false",
        "strategy.params.batch_lr=true",
    ],
    "heterofl-batchlr-linear": [  # HeteroFL given mask-union-linear's LR rule
        "strategy.name='heterofl'",
        "strategy.params.batch_lr=true",
        "dynhp.lr_scaling='linear'",
    ],
    "fedrolex": ["strategy.name='fedrolex'"],
    "fedrolex-plain": [
        "strategy.name='fedrolex'",
        "strategy.params.clip_grad=0",
        "strategy.params.label_mask=false",
    ],
}
# Each strategy's configurations and LR grid: research_select.py chooses, per
# scenario, the configuration and LR of each strategy on the validation samples. The
# scenarios' own train.lr (0.05) is a configuration's plain variant. Each strategy
# chooses between its defaults and the other setting of gradient clipping (mask-union
# does not clip by default; HeteroFL and FedRolex clip to 1 and mask labels, as their
# reference code, and their plain variants do neither), so every strategy is tuned
# over the same 2 x 4 points.
SCENARIO_LR = 0.05
LR_GRID = (0.025, 0.05, 0.1, 0.2)
CHOOSING: dict[str, tuple[str, ...]] = {  # strategy -> the configurations it chooses from
    "mask-union": ("mask-union", "mask-union-clip"),
    "mask-union-index": ("mask-union-index", "mask-union-clip-index"),
    # the wider start pruned by the order: one configuration, so 4 points, not 8
    "mask-union-wide8-order": ("mask-union-wide8-order",),
    # ... for the capped devices only (measured on the four CNNs)
    "mask-union-wide8-order-capped": ("mask-union-wide8-order-capped",),
    "heterofl": ("heterofl", "heterofl-plain"),
    "fedrolex": ("fedrolex", "fedrolex-plain"),
}


# A choice at the grid's edge says only that the best LR may lie beyond it: where a
# strategy's choice sat at an edge of LR_GRID, its grid there goes one step further,
# and on until the choice is inside it (an independent review found 17 of 49 choices
# at an edge), for every configuration of that strategy. (scenario, strategy) -> the
# LRs added.
CNNS = tuple(s for s, (_, sets) in SCENARIOS.items() if sets == CNN)
WIDER = {
    # below 0.025, where 0.025 was the choice
    **dict.fromkeys(
        [
            *((s, "mask-union-wide8-order") for s in (*CNNS, "fmnist-iid", "fmnist-dirichlet")),
            *(
                (s, "mask-union-wide8-order-capped")
                for s in ("mnist-dirichlet-cnn", "fmnist-dirichlet-cnn", "fmnist-dirichlet")
            ),
            ("mnist-iid-cnn", "mask-union-index"),
            ("fmnist-dirichlet", "heterofl"),
            ("fmnist-dirichlet", "fedrolex"),
            ("mnist-dirichlet-cnn", "fedrolex"),  # under memory model revision 6
            ("fmnist-dirichlet-cnn", "heterofl"),  # under memory model revision 6
            ("fmnist-iid", "heterofl"),  # under memory model revision 6
        ],
        (0.0125,),
    ),
    # above 0.2 on the digits, and on where 0.4 was the choice (0.8), and 0.8 (1.6)
    ("digits-iid", "mask-union-wide8-order"): (0.4,),
    ("digits-iid", "mask-union-wide8-order-capped"): (0.4,),
    ("digits-iid", "heterofl"): (0.4, 0.8),
    ("digits-iid", "fedrolex"): (0.4, 0.8),
    ("digits-iid", "mask-union"): (0.4, 0.8, 1.6),
}


def lr_grid(scenario: str, strategy: str) -> tuple[float, ...]:
    """The LRs ``strategy`` chooses from on ``scenario``: :data:`LR_GRID`, widened
    where its choice sat at an edge (:data:`WIDER`)."""
    return tuple(sorted({*LR_GRID, *WIDER.get((scenario, strategy), ())}))


def at_lr(variant: str, lr: float) -> str:
    """The variant that trains ``variant`` at ``lr`` (e.g. ``heterofl-lr0.1``)."""
    return variant if lr == SCENARIO_LR else f"{variant}-lr{lr:g}"


VARIANTS |= {
    at_lr(variant, lr): [*VARIANTS[variant], f"train.lr={lr}"]
    for configurations in CHOOSING.values()
    for variant in configurations
    for lr in {*LR_GRID, *(lr for lrs in WIDER.values() for lr in lrs)}
    if lr != SCENARIO_LR
}
# ... at HeteroFL's bytes: 20 rounds of it send ~1.12x HeteroFL's bytes (up + down),
# 18 rounds ~1.005x, 17 rounds ~0.93x
VARIANTS |= {
    f"{variant}-rounds{rounds}": [*VARIANTS[variant], f"run.rounds={rounds}"]
    for variant in ("mask-union-wide8-order-capped", "mask-union-wide8-order-capped-lr0.025")
    for rounds in (17, 18)
}
# ... pruned further (a lower ceiling: ~10,800 or ~5,400 parameters on a CNN camera)
VARIANTS |= {
    f"mask-union-wide8-order-capped-t{t}": [
        *VARIANTS["mask-union-wide8-order-capped"],
        f"dynhp.target_compression={t}",
    ]
    for t in (20, 40)
}
DEFAULT_VARIANTS = "mask-union,mask-union-before,heterofl,heterofl-plain,fedrolex"
