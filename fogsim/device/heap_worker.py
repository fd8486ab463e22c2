"""Inside a heap measurement's own process (``fogsim.device.heap`` starts it, fresh, under
the preloaded counter): the steps, DynHP phases and rounds it measures, each read
against the heap alive before it (``fogsim.device.heap_counter`` reads the counter).

Kept apart from the driver: ``fogsim.device.heap`` runs in the caller's process (a
test, ``fogsim validate``), this module only as ``python -m fogsim.device.heap_worker
REQUEST``, under the counter.
"""

from __future__ import annotations

import gc
import json
import sys
from typing import Any

from fogsim.device.heap_counter import Counter, calibrate, nbytes, objects_bytes, resident_bytes


def _step_point(counter: Counter, point: dict[str, Any], warmup: int = 3) -> dict[str, Any]:
    import torch
    from torch import nn

    from fogsim.device.models import IMAGE_SHAPE, FogNet
    from fogsim.device.training import optimizer_of_kind

    torch.manual_seed(0)
    if "factory" in point:  # a user's model (fogsim.device.factory), dense or narrowed
        from fogsim.device.factory import build

        in_shape, classes = tuple(point["in_shape"]), point["num_classes"]
        model = build(point["factory"], in_shape, classes)
        if point.get("widths") is not None:  # the first w neurons of every group
            import numpy as np

            from fogsim.device.chain import ChainLayout, assign

            state = {k: v.numpy() for k, v in model.state_dict().items()}
            layout = ChainLayout.of({k: v.shape for k, v in state.items()})
            kept = [np.arange(w) for w in point["widths"]]
            sub = layout.extract(state, kept)
            assign(model, {k: torch.from_numpy(v) for k, v in sub.items()})
            del state, sub
    else:
        shape = tuple(point.get("in_shape", IMAGE_SHAPE))  # e.g. the digits' 1x8x8
        model = FogNet(tuple(point["channels"]), tuple(point["hidden"]), shape)
        in_shape, classes = model.in_shape, model.num_classes
    opt = optimizer_of_kind(point["optimizer"], model.parameters(), 0.01)
    gen = torch.Generator().manual_seed(0)  # a round's, ordering its batches
    # the node's data, and a batch of it indexed inline as the loops do (``x[idx]``):
    # the batch's copy lives inside the step, as long as autograd holds it
    x = torch.randn(point["batch"] + 1, *in_shape)
    y = torch.randint(0, classes, (point["batch"] + 1,))
    idx = torch.arange(point["batch"])

    def step(model: Any = model, opt: Any = opt, idx: Any = idx) -> None:  # bound now
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()

    # the first step at this batch, after steps at another: the step at a new shape a
    # pruning or a new batch gives (oneDNN builds its primitives), less what it leaves
    # in the process's caches (shared by every later step at this shape)
    for _ in range(warmup):
        step(idx=torch.arange(point["batch"] + 1))
    opt.zero_grad(set_to_none=True)
    gc.collect()
    base = counter.current()
    counter.reset_peak()
    step()
    opt.zero_grad(set_to_none=True)
    gc.collect()
    first = counter.peak() - max(base, counter.current())
    for _ in range(warmup - 1):
        step()
    transients, mmaps = [], []
    for _ in range(3):  # steady state: the three agree to a few bytes
        opt.zero_grad(set_to_none=True)
        gc.collect()
        base, (mmap_base, _) = counter.current(), counter.mmap()
        counter.reset_peak()
        step()
        transients.append(counter.peak() - base)
        mmaps.append(counter.mmap()[1] - mmap_base)
    opt.zero_grad(set_to_none=True)
    tensors = resident_bytes(model, opt, grads=False)
    held = [model, opt, gen]
    del model, opt, gen, step
    objects = objects_bytes(counter, held, tensors)
    return {
        **point,
        "transient": max(transients),
        "objects": objects,
        "measured": max(transients) + tensors + objects,
        "measured_new_shape": first + tensors + objects,
        "peak": max(max(transients), first) + tensors + objects,  # what the model bounds
        "mmap_delta": max(mmaps),
    }


def _warm_process(counter: Counter, keep_frozen: bool) -> None:
    """First use of every op and optimizer in this process on tiny models, so one-time
    initialisation (lazy imports, thread pools, library set-up) is not measured.

    What is alive meanwhile (modules, torch's registries) is frozen: never garbage, so
    the full collections each point runs (to empty Python's free lists and free the
    cycles of what it measured) skip it; unfrozen, each took ~0.18 s with torch._dynamo
    loaded, 12 s of a process's warm-up. With ``keep_frozen`` (single steps: the grid's
    ~400 collections took ~1 min) what is alive after it stays frozen; otherwise it is
    unfrozen, as in a client's process, where the training loops freeze and unfreeze
    around their own collections (``training.release_interpreter_caches``)."""
    gc.collect()
    gc.freeze()
    for channels in ((), (1,)):
        for kind in ("sgd", "sgd-momentum", "adam"):
            for batch in (1, 16):
                point = {"channels": channels, "hidden": (2,), "batch": batch, "optimizer": kind}
                _step_point(counter, point, warmup=1)
    gc.collect()
    if keep_frozen:
        gc.freeze()
    else:
        gc.unfreeze()


class _Phases:
    """``on_phase`` of ``train_dynhp``: the heap peak of each phase (module doc)."""

    def __init__(self, counter: Counter, model: Any) -> None:
        self.counter, self.model, self.optimizer = counter, model, None
        gc.freeze()  # what exists now is never garbage: each phase's collect skips it
        self.records: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None

    def __call__(self, phase: str, optimizer: Any) -> None:
        self.close()
        if phase != "end":
            gc.collect()  # garbage of the phase before, freed now, not inside this one
            self.optimizer = optimizer
            resident = resident_bytes(self.model, optimizer)
            self.open = {"kind": phase, "resident": resident, "base": self.counter.current()}
            self.counter.reset_peak()

    def close(self) -> None:
        if self.open is None:
            return
        end, peak = self.counter.current(), self.counter.peak()
        o, self.open = self.open, None
        change = resident_bytes(self.model, self.optimizer) - o["resident"]
        kept = max(0, end - o["base"] - change)  # left allocated beyond its tensors
        measured = peak - o["base"] + o["resident"]
        self.records.append(
            {"kind": o["kind"], "peak": measured, "kept": kept, "device_peak": measured - kept}
        )


def _dynhp_run(counter: Counter, request: dict[str, Any]) -> dict[str, Any]:
    import torch

    from fogsim.data import load_dataset
    from fogsim.device.chain import widths_of
    from fogsim.device.dynhp import DynHP, DynHPConfig
    from fogsim.device.dynhp_train import train_dynhp
    from fogsim.device.factory import FactoryArch
    from fogsim.device.models import FogNet

    data = load_dataset("mnist")
    n = request["samples"]
    x, y = data.tensors(data.train_x[:n], data.train_y[:n])
    torch.manual_seed(0)
    config = DynHPConfig(criterion=request.get("criterion", "taylor"))
    if request.get("factory"):
        arch = FactoryArch(request["factory"], (1, 28, 28), 10)
        model, dynhp = arch.build(), DynHP(config, arch)
    else:
        model = FogNet(tuple(request["channels"]), tuple(request["hidden"]))
        dynhp = DynHP(config, model)
    gen = torch.Generator()
    probe = _Phases(counter, model)
    optimizer: Any = request["optimizer"]
    modelled, error, epochs = [], None, request["epochs"]
    try:
        for epoch in range(epochs):
            stats = train_dynhp(
                model, x, y, dynhp, budget=request["budget"], epochs=1,
                progress_range=(epoch / epochs, (epoch + 1) / epochs), optimizer=optimizer,
                lr=0.01, generator=gen.manual_seed(epoch), on_phase=probe,
            )  # fmt: skip
            optimizer = stats.optimizer
            modelled += stats.memory
            del stats
    except ValueError as e:  # BudgetError: the budget holds no model
        error = f"{type(e).__name__}: {e}"
    steps = [r for r in probe.records if r["kind"] == "step"]
    for r, m in zip(steps, modelled, strict=False):
        r["modelled"] = m
    widths = list(widths_of(model))
    # what the phases' base held beside the tensors: the model's, the optimizer's, the
    # generator's and DynHP's objects (DynHP's arrays are numpy: all of it counts)
    opt = optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
    tensors = resident_bytes(model, opt, grads=False)
    held = [model, opt, gen, dynhp]
    probe.model = probe.optimizer = None
    gc.unfreeze()  # the probe froze them (their cycles would never be collected)
    del model, opt, optimizer, gen, dynhp
    objects = objects_bytes(counter, held, tensors)
    return {"phases": probe.records, "error": error, "widths": widths, "objects": objects}


def _round(counter: Counter, request: dict[str, Any]) -> dict[str, Any]:
    import torch

    from fogsim.device.models import FogNet
    from fogsim.device.training import optimizer_of_kind, train_epochs
    from fogsim.flower.wire import model_record

    torch.manual_seed(0)
    model = FogNet(tuple(request["channels"]), tuple(request["hidden"]))
    x = torch.randn(request["samples"], *model.in_shape)
    y = torch.randint(0, model.num_classes, (request["samples"],))

    def one_round(model: Any = model) -> None:  # bound now: deleted with it
        opt = optimizer_of_kind(request["optimizer"], model.parameters(), 0.01)
        gen = torch.Generator().manual_seed(0)
        train_epochs(model, x, y, epochs=1, batch_size=request["batch"], optimizer=opt,
                     generator=gen, proximal_mu=request["proximal_mu"])  # fmt: skip
        for p in model.parameters():
            p.grad = None

    one_round()  # as in a client's long-lived process: the round before is not collected
    base = counter.current()
    counter.reset_peak()
    one_round()
    end = counter.current()
    params = nbytes(*model.parameters())
    measured = counter.peak() - base + params
    gc.collect()  # finds no garbage, but empties the interpreter's free lists
    freed_below_base = base - counter.current()
    counter.reset_peak()
    before_reply = counter.current()
    model_record(model)  # the trained weights, as the client sends them
    reply = counter.peak() - before_reply
    held = [model]
    del model, one_round
    objects = objects_bytes(counter, held, params)  # in the base all round: added
    return {
        "measured": measured + objects,
        "order": 8 * request["samples"],  # the round's shuffled int64 sample order
        "cached": end - base,  # what the round left in Python's free lists
        "freed_below_base": freed_below_base,  # >= 0: the round leaked nothing
        "reply": reply,  # serialising the reply, at its peak
        "params": params,
        "objects": objects,
    }


def _client_round(counter: Counter, request: dict[str, Any]) -> dict[str, Any]:
    """A fleet node's whole ``clients.fog_client.train`` call, by phase: what the
    strategy sends it in round ``rounds`` (its replies to the rounds before taken back
    by the strategy's own ``on_reply``, as the server does: e.g. DynHP's state under
    ``masks = "own"``), trained as a Flower worker does, its last of ``repeats`` calls
    measured (the ones before settle the library caches at its shapes)."""
    import copy

    import numpy as np
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

    import clients.fog_client as client
    from fogsim.fleet import build_fleet
    from fogsim.flower import wire
    from fogsim.flower.server_app import initial_model
    from fogsim.scenario import load_scenario
    from fogsim.strategies.build import build_strategy

    sc = load_scenario(request["scenario"], request["overrides"])
    fleet = build_fleet(sc.fleet, sc.run.seed)
    strategy = build_strategy(sc, fleet)
    node = int(np.argmin(fleet.budgets)) if request["node"] is None else request["node"]
    budget = int(fleet.budgets[node])
    marks: dict[str, int] = {}

    def phase(train: Any) -> Any:  # the peak up to this phase, then the phase's own
        def timed(*args: Any, **kwargs: Any) -> Any:
            marks["load"], marks["entry"] = counter.peak(), counter.current()
            counter.reset_peak()
            out = train(*args, **kwargs)
            marks["train"] = counter.peak()
            counter.reset_peak()
            return out

        return timed

    client.train_fixed = phase(client.train_fixed)
    client.train_dynhp_round = phase(client.train_dynhp_round)
    arrays = ArrayRecord(initial_model(sc).state_dict())
    if hasattr(strategy, "global_state"):  # as its configure_train sets it, from the arrays
        strategy.global_state = {k: v.numpy() for k, v in arrays.items()}

    def content_for(rnd: int) -> RecordDict:
        records, extra = strategy.node_payload(node, arrays, rnd)
        config = {**extra, wire.NODE: node, wire.CLASS: fleet.device(node).name,
                  wire.BUDGET: budget, wire.ROUND: rnd, wire.SPEC: strategy.spec}  # fmt: skip
        return RecordDict({**records, wire.CONFIG: ConfigRecord(config)})

    rounds = request.get("rounds", 1)
    if rounds > 1:  # Flower's messages need a run's identity, as in a ServerApp
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    for rnd in range(1, rounds):
        content = content_for(rnd)
        sent = Message(content, dst_node_id=1, message_type=MessageType.TRAIN)
        strategy.on_reply(node, Message(client.train(content), reply_to=sent), False)
    before = copy.deepcopy(strategy.state_dict())  # each repeat gets the same message
    for _ in range(request["repeats"]):
        strategy.load_state_dict(copy.deepcopy(before))
        content = content_for(rounds)
        data = nbytes(*client.local_data(wire.spec_of(content), node))
        gc.collect()  # empties Python's free lists: what the call leaves there is its own
        base = counter.current()
        counter.reset_peak()
        reply = client.train(content)
        reply_peak = counter.peak()
        metrics = dict(reply[wire.METRICS])
        del reply
        if wire.NUM_EXAMPLES not in metrics:  # refused (over budget) or dropped
            return {"node": node, "budget": budget, "refused": metrics}
        left = counter.current() - base
        gc.collect()
        free_lists = left + base - counter.current()
    samples = int(metrics[wire.NUM_EXAMPLES])
    return {
        "node": node,
        "budget": budget,
        "modelled": int(metrics[wire.PEAK_MEMORY]),
        "batch": int(metrics[wire.BATCH_SIZE]),
        "data": data,  # the node's training images and labels
        "order": 8 * samples,  # the round's shuffled int64 sample order
        # what the call left allocated once its reply was gone: the interpreter's and
        # libraries' caches (the round's own objects are freed), of which a full
        # collection empties Python's free lists
        "left": left,
        "free_lists": free_lists,
        "load": marks["load"] - base,
        "entry": marks["entry"] - base,  # data, model and generator, as training starts
        "train": marks["train"] - base,
        "reply": reply_peak - base,
    }


def main(request: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    counter = Counter()
    if request["task"] == "calibrate":
        return calibrate(counter)
    _warm_process(counter, keep_frozen=request["task"] == "steps")
    if request["task"] == "steps":
        return {"results": [_step_point(counter, p) for p in request["points"]]}
    if request["task"] == "round":
        return _round(counter, request)
    if request["task"] == "client":
        return _client_round(counter, request)
    return _dynhp_run(counter, request)


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
