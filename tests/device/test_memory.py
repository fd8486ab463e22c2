"""The memory model against the process heap itself (not against fogsim's own tracker),
and batch sizing under a budget.

The heap is counted by ``fogsim.device.heap`` (an LD_PRELOAD malloc/free counter, in
a fresh process per measurement): first checked on a known allocation, then on a grid
of widths (the narrow shapes DynHP and sub-model strategies reach included), batches
and optimizers, and on whole DynHP runs, pruning checks included.
"""

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from fogsim.data import load_dataset
from fogsim.device import heap
from fogsim.device.arch import Arch
from fogsim.device.memory import (
    BudgetError,
    max_batch_size,
    memory_breakdown,
    object_bytes,
    proximal_anchor_bytes,
    training_memory,
)
from fogsim.device.models import IMAGE_SHAPE, FogNet
from fogsim.fleet import build_fleet
from fogsim.scenario import load_scenario

try:
    heap.library()
except heap.HeapCounterUnavailable as e:
    pytest.skip(f"no heap counter here: {e}", allow_module_level=True)

KiB = 1024
# dense and narrow: MLPs down to 2-2, CNNs from 1-1 channels (oneDNN pads these 8x)
ARCHS = [
    ((), (300, 100)),
    ((), (37, 11)),
    ((), (2, 2)),
    ((1, 1), (8,)),
    ((2, 3), (8,)),
    ((4, 8), (8,)),
    ((5, 9), (17,)),
    ((16, 32), (128,)),
]


# Every conv input at least the 5x5 kernel (fogsim.scenario.model_section.conv_blocks):
# smaller, oneDNN trains the weights with a gemm kernel the model does not count.
OTHER_IMAGES = [
    ((), (300, 100), (1, 8, 8)),
    ((1,), (), (1, 8, 8)),
    ((16,), (128,), (1, 8, 8)),
    ((4, 8), (32,), (1, 10, 10)),
    # RGB: oneDNN reads a 3-channel image as it is (replay.PLAIN_IMAGE_CHANNELS); charged
    # a blocked copy, a first conv of 1-5 channels was modelled 1.3-1.66x the heap
    ((1,), (10,), (3, 32, 32)),
    ((5, 9), (32,), (3, 32, 32)),
]


def test_the_counter_sees_a_known_allocation() -> None:
    moved = heap.calibrate()
    assert 3 << 20 <= moved["allocated"] <= (3 << 20) + 16 * KiB, moved  # + small objects
    assert abs(moved["after_free"]) <= 4 * KiB, moved


@pytest.fixture(scope="module")
def grid() -> list[dict]:
    points = [
        {"channels": c, "hidden": h, "batch": b, "optimizer": o}
        for c, h in ARCHS
        for b in (1, 16, 256)
        for o in ("sgd", "sgd-momentum", "adam")
    ]
    # Adam on every CNN at a batch no other point runs: its first step is at a new shape
    # (at the batches above each Adam point runs after its SGD twin in one process)
    points += [{"channels": c, "hidden": h, "batch": 4, "optimizer": "adam"} for c, h in ARCHS if c]
    points += [  # the widest convs at the largest batches
        {"channels": (16, 32), "hidden": (128,), "batch": 512, "optimizer": "sgd"},
        {"channels": (32, 64), "hidden": (128,), "batch": 64, "optimizer": "adam"},
    ]
    points += [  # a 50 MB weight: glibc mmaps it, up to a page beyond its bytes (x6 with Adam)
        {
            "channels": (),
            "hidden": (1024,),
            "batch": 1,
            "optimizer": "adam",
            "in_shape": (3, 64, 64),
        }
    ]
    points += [  # other images: the digits' 8x8 (one conv block), a conv 2 on 5x5 maps
        {"channels": c, "hidden": h, "batch": b, "optimizer": "sgd-momentum", "in_shape": s}
        for c, h, s in OTHER_IMAGES
        for b in (1, 16, 256)
    ]
    return heap.measure_steps(points)


def test_a_fresh_process_allocates_as_the_model_counts() -> None:
    """A step measured alone, in a fresh process: an MLP on 3x32x32 images whose first
    weight is a whole number of pages (3,072 x 300) with momentum. Before fogsim pinned
    glibc's mmap threshold (fogsim/__init__), glibc served it and its copies with mmap
    there, a page beyond their bytes each, and the step went 1.3-1.4 KB over the model."""
    point = {"channels": (), "hidden": (300,), "batch": 1, "optimizer": "sgd-momentum"}
    (r,) = heap.measure_steps([{**point, "in_shape": (3, 32, 32)}], jobs=1)
    modelled = training_memory(Arch((), (300,), (3, 32, 32)), 1, "sgd-momentum")
    assert r["measured"] <= modelled <= 1.15 * r["measured"], (r, modelled)


def test_model_bounds_the_heap_within_15_percent(grid: list[dict]) -> None:
    """measured <= modelled <= 1.15 x measured at every point, measured being the peak
    of training there: its first step at the point's shape or a steady step after it,
    whichever is higher, each within the model. A CNN's first step at a new shape
    (after a pruning, at a new batch) builds oneDNN's primitives: on the narrow CNNs
    ~13 KB above a steady step, and 0.6-22 KB below the model (the least on the
    narrowest); so a steady step of the tiniest CNNs is up to 1.18x below the model
    (the digits' one-conv CNN at batch 1: 77-81 KB). Until revision 7 steps of a few
    tens of KB were allowed 16 KiB over 1.15 (Adam on a 2-2 MLP was modelled 1.17x the
    heap: memory.REVISIONS).
    Points sharing a shape share its primitives (one cache per process): only the
    first of them measures a new shape, so every point whose steady step alone is
    over 1.15 has a shape of its own here (the one-conv CNN on 8x8 images), and so do
    the CNNs with Adam at batch 4."""
    for r in grid:
        arch = Arch(tuple(r["channels"]), tuple(r["hidden"]), tuple(r.get("in_shape", IMAGE_SHAPE)))
        modelled = training_memory(arch, r["batch"], r["optimizer"])
        peak = r["peak"]
        assert peak <= modelled, (r, modelled)
        assert modelled <= 1.15 * peak, (r, modelled)
        assert r["mmap_delta"] == 0, r  # nothing bypassed malloc during the step


# (channels, hidden, batch, samples, optimizer, FedProx mu): a sensor's round, a
# device with 10x the samples (every batch's index view once lived the whole round),
# a narrow CNN, FedProx (its term once sat in the autograd graph: ~3.7x the model)
ROUNDS = [
    ((), (40, 13), 16, 540, "sgd-momentum", 0.0),
    ((), (64, 32), 16, 5840, "sgd-momentum", 0.0),
    ((2, 3), (12,), 16, 5840, "sgd", 0.0),
    ((), (64, 32), 16, 1350, "sgd-momentum", 0.01),
    ((), (300, 100), 16, 600, "adam", 0.01),
    # Adam at a big batch peaks in its step, after the batch's copy has died with the
    # graph: charged the batch there, the model was 1.24x this round
    ((), (109, 48), 256, 2048, "adam", 0.0),
]


# a node's whole client call: (scenario, overrides, the smallest budget at least this,
# the round measured: the node's replies to the rounds before go back to its strategy)
CNN_SET = ["model.arch='cnn'", "model.hidden=[128]"]
OWN = ["strategy.name='mask-union'", "strategy.params.masks='own'", "train.local_epochs=3"]
CLIENTS = [
    ("fleet5-mnist-iid", ["strategy.name='heterofl'"], 0, 1),  # a 512 KiB sensor
    ("fleet5-mnist-iid", ["strategy.name='mask-union'"], 0, 1),
    ("fleet5-fmnist-dirichlet", ["strategy.name='mask-union'", *CNN_SET], 1 << 20, 1),  # camera
    # a sensor with DynHP's state sent back (its unpacked copy once lived through training,
    # over the reported peak and, once, the budget: an independent check's finding)
    ("fleet5-mnist-dirichlet", OWN, 0, 3),
    ("fleet5-mnist-lenet", ["strategy.name='mask-union'"], 0, 2),  # a user's model (LeNet-5)
    # Adam: its step peaks after the batch's copy is freed (modelled there, 1.16x)
    ("fleet5-mnist-iid", ["strategy.name='heterofl'", "train.optimizer='adam'"], 0, 2),
]


def client_node(scenario: str, overrides: list[str], least: int) -> tuple[str, int]:
    """The scenario file and, of its nodes of the smallest budget of at least ``least``,
    the one with the most samples (the most steps a round)."""
    path = str(Path(__file__).parents[2] / "scenarios" / f"{scenario}.toml")
    sc = load_scenario(path, overrides)
    budgets = build_fleet(sc.fleet, sc.run.seed).budgets
    smallest = budgets[budgets >= least].min()
    nodes = np.flatnonzero(budgets == smallest)
    if sc.data.partitioning == "draws":  # every node draws as many samples
        return path, int(nodes[0])
    labels = load_dataset(sc.data.dataset, sc.data.path).train_y
    weights = list(sc.fleet.data_shares) if sc.fleet.data_shares else None
    shares = sc.data.split(labels, sc.fleet.nodes, sc.run.seed, weights)
    return path, int(max(nodes, key=lambda n: len(shares[n])))


MLP, CNN, WIDE_CNN = ((), (300, 100)), ((4, 8), (32,)), ((16, 32), (128,))
NARROW_CNN = ((3, 6), (12,))
MOMENTUM, TAYLOR = "sgd-momentum", "taylor"
RUNS = [(MLP, 256, MOMENTUM, TAYLOR), (MLP, 512, MOMENTUM, TAYLOR), (MLP, 1024, MOMENTUM, TAYLOR)]
RUNS += [(CNN, 1152, MOMENTUM, TAYLOR), (CNN, 2048, MOMENTUM, TAYLOR)]
RUNS += [(WIDE_CNN, 4096, MOMENTUM, TAYLOR)]
RUNS += [(MLP, 256, "sgd", TAYLOR), (MLP, 512, "adam", TAYLOR)]  # other optimizers
RUNS += [(WIDE_CNN, 2048, "adam", TAYLOR)]
# plain SGD packs a narrow CNN to within ~100 B of its budget, and the first step at
# each new shape builds oneDNN's primitives: 28-340 B over the budget under revision 5
RUNS += [(NARROW_CNN, 1150, "sgd", TAYLOR)]
# scored by weight norms in and out (its scoring once squared a copy of each weight),
# under the budget of the dense MLP at batch 16, so the scoring runs at a full budget
RUNS += [(MLP, 3216, MOMENTUM, "weight-norm-io")]
FACTORY_RUNS = [("lenet5", 1152), ("resnet_like", 1536)]
DENSE = {"lenet5": (6, 16, 120, 84), "resnet_like": (8, 16, 16, 32)}
REFUSED = [256, 512, 1024]  # KiB: below the narrowest CNN DynHP prunes to


@pytest.fixture(scope="module")
def measured() -> Iterator[dict[tuple, Future]]:
    """Every round and DynHP run below, started at once in heap-counted processes, one
    per CPU (each counts only its own heap): a test waits for its own."""
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        runs = {("round", c): pool.submit(heap.measure_round, *c) for c in ROUNDS}
        for arch, kib, optimizer, criterion in RUNS:
            runs[("dynhp", arch, kib, optimizer, criterion)] = pool.submit(
                heap.measure_dynhp, *arch, kib * KiB, epochs=3, samples=1000,
                optimizer=optimizer, criterion=criterion)  # fmt: skip
        for model, kib in FACTORY_RUNS:
            runs[("factory", model, kib)] = pool.submit(
                heap.measure_dynhp, (), (), kib * KiB, epochs=3, samples=1000,
                factory=f"tests.example_models:{model}")  # fmt: skip
        for scenario, overrides, least, rounds in CLIENTS:
            path, node = client_node(scenario, overrides, least)
            runs[("client", scenario, *overrides)] = pool.submit(
                heap.measure_client_round, path, overrides, node, rounds=rounds
            )
        for kib in REFUSED:
            runs[("refused", kib)] = pool.submit(
                heap.measure_dynhp, *CNN, kib * KiB, epochs=1, samples=200
            )
        yield runs
        for run in runs.values():
            run.cancel()


@pytest.mark.parametrize("case", ROUNDS, ids=[f"{c[1]}-{c[3]}-{c[4]}-mu{c[5]}" for c in ROUNDS])
def test_a_round_of_the_fixed_model_loop_stays_within_the_model_by_the_heap(
    case, measured: dict[tuple, Future]
) -> None:
    """A whole round of ``train_epochs`` (HeteroFL, FedRolex, fedavg-feasible and
    Flower plug-in clients; FedProx's copy of the model counted) against the model, by
    the heap's count, the model's, optimizer's and generator's objects included, less
    what the budget leaves out (the shuffled sample order and what the round left in
    Python's free lists: ``heap.measure_round``). What this catches is a loop that
    keeps more than a step (a loss module's dicts: +2.3 KB; FedProx's copy counted
    without its tensors' metadata: +3 KB; the index views: +263 KB at 5,840 samples;
    FedProx in the graph: megabytes) or objects the model leaves out (the model's own,
    20-25 KB, were: a 512 KiB sensor's round ran at 1.05x its budget)."""
    channels, hidden, batch, samples, optimizer, mu = case
    r = measured[("round", case)].result()
    arch = Arch(channels, hidden)
    modelled = training_memory(arch, batch, optimizer) + (proximal_anchor_bytes(arch) if mu else 0)
    device = r["measured"] - r["order"] - r["cached"]
    assert r["objects"] > 15 * KiB, r  # the model's own objects were measured
    assert device <= modelled, (r, modelled)
    assert r["freed_below_base"] >= 0, r  # the round left nothing but free lists
    assert modelled <= 1.15 * device, (r, modelled)
    # then the reply: one copy of the model beside it (Flower's ArrayRecord of the
    # state dict took ~2x: up to 1.35x the budget), within what the step took
    assert r["reply"] <= r["params"] + 32 * KiB, r
    assert r["params"] + r["reply"] <= modelled, (r, modelled)


@pytest.mark.parametrize("case", CLIENTS, ids=[f"{c[0]}-{'-'.join(c[1])}" for c in CLIENTS])
def test_a_whole_client_call_stays_within_the_peak_it_reports_by_the_heap(
    case, measured: dict[tuple, Future]
) -> None:
    """A node's whole ``clients.fog_client.train`` call on what its strategy sends it
    (a 512 KiB MNIST sensor under HeteroFL and mask-union, and under HeteroFL with Adam,
    a 1 MiB CNN camera under mask-union, a sensor's third round with its DynHP state
    sent back, a 1.125 MiB LeNet-5 sensor under mask-union), by the heap from
    before the call, phase by phase: training peaks
    within the peak the node reports, which is within its budget, and so does building
    the reply. Not charged: the node's data and sample order, and what the call leaves
    allocated once its reply is gone (the interpreter's caches, shared by every round
    the process runs: Python's free lists, its type cache), which the training loops
    empty before each step (``training.release_interpreter_caches``): 9-18 KB here, the
    same at 1 and 8 local epochs; left to grow they were 35-64 KB at 1 epoch and 170 KB
    at 8. Before the model counted the objects a round holds (``memory.object_bytes``,
    DynHP's arrays), the sensor's round ran at 1.05-1.09x its budget by this count."""
    scenario, overrides, _, _ = case
    r = measured[("client", scenario, *overrides)].result()
    caches = r["data"] + r["left"]
    device = r["train"] - caches - r["order"]
    assert device <= r["modelled"] <= r["budget"], r
    assert r["modelled"] <= 1.15 * device, r
    assert r["reply"] - caches <= r["budget"], r
    assert r["entry"] - r["data"] > 20 * KiB, r  # the model was built inside the call
    assert r["left"] <= 24 * KiB, r  # the caches hold about one step's worth


@pytest.mark.parametrize(
    ("arch", "kib", "optimizer", "criterion"),
    RUNS,
    ids=[f"{a}-{k}KiB-{o}-{c}" for a, k, o, c in RUNS],
)
def test_a_dynhp_run_stays_within_its_budget_by_the_heap(
    arch, kib, optimizer, criterion, measured: dict[tuple, Future]
) -> None:
    """Every training step and every pruning check of a DynHP run, by the heap's count
    (what a phase keeps for good beyond its tensors, a process-wide library cache,
    excepted: ``fogsim.device.heap``); on a step where such a cache grows (the first at
    a new shape) building it is in the model (revision 5: it was 0.45-2.0 KB over,
    allowed 1% here; revision 6: 0.43 KB more on a narrow CNN with plain SGD). The
    first fit of a model that arrives bigger than the budget is not a training step:
    it needs the model as received plus one new tensor (the README), by its whole
    peak, caches included (64 KiB allowed for those a first conv sets up; numpy's
    first ``setdiff1d`` there once set up 1.2-1.4 MB)."""
    budget = kib * KiB
    run = measured[("dynhp", arch, kib, optimizer, criterion)].result()
    assert run["error"] is None, run["error"]
    objects = run["objects"]  # the model's, optimizer's, generator's and DynHP's
    assert objects > 15 * KiB, run["objects"]
    received = [p.untyped_storage().nbytes() for p in FogNet(*arch).parameters()]
    for fit in (p for p in run["phases"] if p["kind"] == "fit"):
        assert fit["peak"] <= sum(received) + max(received) + 64 * KiB, fit
    phases = [p for p in run["phases"] if p["kind"] in ("step", "check")]
    assert sum(p["kind"] == "check" for p in phases) >= 3
    assert run["widths"] != [*arch[0], *arch[1]], "the run must prune"
    for p in phases:
        assert p["device_peak"] + objects <= budget, p
        if "modelled" in p:  # the model saw it coming
            assert p["device_peak"] + objects <= p["modelled"], p


@pytest.mark.parametrize(("model", "kib"), FACTORY_RUNS, ids=[f"{m}-{k}" for m, k in FACTORY_RUNS])
def test_dynhp_on_a_factory_model_stays_within_its_budget_by_the_heap(
    model, kib, measured: dict[tuple, Future]
) -> None:
    """A user's model (``[model] factory``: LeNet-5; a CNN with batch norm), pruned by
    DynHP with its memory from the chain replay at each step's widths: every step and
    pruning check within the budget by the heap's count, as above (building a library
    cache included: until revision 5 such a phase was allowed 1% more). The
    narrowest conv needs ~1 MB at batch 16 (oneDNN pads a 1-channel map 8x): the
    budgets are above it."""
    budget = kib * KiB
    run = measured[("factory", model, kib)].result()
    assert run["error"] is None, run["error"]
    phases = [p for p in run["phases"] if p["kind"] in ("step", "check")]
    assert sum(p["kind"] == "check" for p in phases) >= 3 and len(phases) > 100
    assert all(w < d for w, d in zip(run["widths"], DENSE[model], strict=True)), run["widths"]
    objects = run["objects"]  # the model's, optimizer's, generator's and DynHP's
    for p in phases:
        assert p["device_peak"] + objects <= budget, p
        if "modelled" in p:
            assert p["device_peak"] + objects <= p["modelled"], p


@pytest.mark.parametrize("kib", REFUSED)
def test_a_cnn_below_its_narrowest_model_refuses_to_train(
    kib, measured: dict[tuple, Future]
) -> None:
    """oneDNN pads a 1-channel map 8x: even the narrowest CNN DynHP prunes to (2
    neurons a group) needs ~1.06 MB at batch 16 with its objects and DynHP's arrays, so
    a 256 KiB, 512 KiB or 1 MiB device refuses (BudgetError) instead of training over
    budget (at 1 MiB it once trained, its whole round ~1.02x the budget by the heap)."""
    run = measured[("refused", kib)].result()
    assert run["error"].startswith("BudgetError") and "narrowest model" in run["error"]
    assert not [p for p in run["phases"] if p["kind"] == "step"]


def test_breakdown_and_optimizer_instance() -> None:
    model = FogNet((), (30, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert training_memory(model, 8, opt) == training_memory(model, 8, "sgd-momentum")
    b = memory_breakdown(model, 8, "adam")
    n = sum(p.numel() for p in model.parameters())
    assert b.params == b.grads == 4 * n and b.optimizer_state == 8 * n
    assert b.total == training_memory(model, 8, "adam")
    parts = b.params + b.grads + b.optimizer_state + b.workspace + b.inputs
    assert b.total <= parts + max(b.activations, 0) + b.overhead + b.objects
    assert b.objects == object_bytes(Arch.of(model), "adam") > 0
    assert Arch.of(model).num_params() == n


def test_max_batch_size_is_largest_fitting() -> None:
    model = FogNet((), (300, 100))
    budget = training_memory(model, 100, "sgd") + 5
    b = max_batch_size(model, budget, "sgd")
    assert b == 100
    assert training_memory(model, b + 1, "sgd") > budget
    assert max_batch_size(model, budget, "sgd", cap=7) == 7


def test_budget_error_names_budget_and_need() -> None:
    model = FogNet((), (300, 100))
    need = training_memory(model, 1, "adam")
    with pytest.raises(BudgetError, match=f"{need} B") as err:
        max_batch_size(model, need - 1, "adam")
    assert str(need - 1) in str(err.value)
    assert isinstance(err.value, ValueError)
