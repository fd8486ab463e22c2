"""Scale and speed: what a round costs as the fleet grows, against a floor and plain Flower.

One table, one row per (registered nodes, clients per round), each measured in fresh
processes (Ray's and Flower's fixed costs included, as a user pays them):

- ``fogsim``: ``fogsim run`` of ``scenarios/scale-mnist-1000.toml`` (MNIST MLP
  784-300-100-10, 1 local epoch, batch 32, log-uniform 1..8 MiB budgets) with the
  row's node and client counts, for ``mask-union`` (DynHP sub-models) and ``fedavg``
  (dense). Seconds per round = median of ``rounds.csv`` ``wall_s`` over the rounds
  after the first (the first pays Ray's actor start and each worker's data load).
- ``floor``: the same client work in one plain process, no Flower, no Ray: the same
  strategy picks the same nodes and sub-models, and the client's own
  ``clients.fog_client.train`` runs each message in a loop (torch with one thread, as
  each client actor has); seconds per round = the loop's time, median after round 1.
  Server-side work (aggregation, evaluation) is not in the floor.
- ``flower``: plain Flower, ``flwr.serverapp.strategy.FedAvg.start`` with its own loop
  and sampling, one Flower node per fleet node (the usual ``partition-id`` pattern), a
  plain ClientApp training the dense model on the same partition for the same epochs
  and batch, centralized evaluation on the test split each round like fogsim, and the
  same Ray resources through ``fogsim.flower.engine.launch``. Compare with fogsim ``fedavg``.
- ``work s``: the clients' own compute per round inside fogsim's actors (the sum of
  ``nodes.csv`` ``time_s``, which ``train`` measures around its work): the floor's
  work done on a loaded machine. ``work / floor`` well above 1 means the actors are
  starved of cores (by the driver, Ray or other load), not slowed by messaging.
- ``peak RSS`` / ``peak PSS``: the whole process tree (driver, Ray's daemons and
  workers), sampled from ``/proc`` every 0.2 s; RSS counts shared pages (torch's
  libraries in every worker) once per process, PSS splits them.

Usage::

    python benchmarks/scale.py --quick      # 100 and 1,000 nodes, 100 per round: ~4 min
    python benchmarks/scale.py              # + 10,000 and 100,000 nodes, 1,000 per round
    python benchmarks/scale.py --rows 100000:1000::60   # nodes:per-round[:in-flight[:draws]]
    python benchmarks/scale.py --quick --repeats 3 --json benchmarks/results/scale.json

``--json PATH`` writes the table (one object per row and strategy; with ``--repeats`` the
mean over the repeats and its ``_std``) as a results file (``results_io``), which the
README's scale table is rendered from.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from results_io import write as write_results
from scale_table import json_rows, print_table

from fogsim.flower.engine import descendants
from fogsim.scenario import load_scenario
from fogsim.study.results import load

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "scale-mnist-1000.toml"
FULL = ["100:100", "1000:100", "10000:100", "1000:1000::60", "10000:1000::60", "100000:1000::60"]
QUICK = ["100:100", "1000:100"]
FLOWER_MAX_NODES = 10_000  # plain Flower registers a node per fleet node: past this, hours
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- measuring a process tree -------------------------------------------------
def tree_memory(root: int) -> dict[int, tuple[int, int, str]]:
    """pid -> (RSS bytes, PSS bytes, command line) of ``root`` and all its descendants."""
    out = {}
    for pid in [root, *descendants(root)]:
        try:
            rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
            pss = next(int(ln.split()[1]) * 1024 for ln in rollup if ln.startswith("Pss:"))
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError, StopIteration):
            continue  # the process ended while we looked
        out[pid] = (rss, pss, cmd.strip())
    return out


def run_measured(cmd: list[str], log: Path) -> tuple[float, int, int, dict]:
    """Run ``cmd``; (wall seconds, peak tree RSS, peak tree PSS, the tree's
    :func:`tree_memory` at the PSS peak). Fails loudly."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        peak: list[Any] = [0, 0, {}]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                tree = tree_memory(proc.pid)
                rss, pss = sum(t[0] for t in tree.values()), sum(t[1] for t in tree.values())
                peak[0] = max(peak[0], rss)
                if pss > peak[1]:
                    peak[1], peak[2] = pss, tree

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        done.set()
        sampler.join()
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {code}; see {log}:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - t0, peak[0], peak[1], peak[2]


def parse_row(row: str) -> tuple[int, int, int | None, int | None]:
    """``nodes:per_round[:max_in_flight[:samples_per_node]]`` (an empty field: the
    default): (nodes, per round, messages in flight, samples per node or None). With
    samples per node each node draws its own (``[data] partitioning = "draws"``), so
    fleets bigger than the data set hold real data."""
    fields = row.split(":") + ["", ""]
    nodes, per_round = int(fields[0]), int(fields[1])
    return (
        nodes,
        per_round,
        int(fields[2]) if fields[2] else None,
        int(fields[3]) if fields[3] else None,
    )


def overrides(
    nodes: int,
    per_round: int,
    rounds: int,
    strategy: str,
    in_flight: int | None,
    draws: int | None = None,
) -> list[str]:
    out = [
        f"fleet.nodes={nodes}",
        f"simulation.clients_per_round={per_round}",
        f"run.rounds={rounds}",
        f"strategy.name='{strategy}'",
    ]
    if in_flight:
        out.append(f"simulation.max_in_flight={in_flight}")
    if draws:
        out += ["data.partitioning='draws'", f"data.samples_per_node={draws}"]
    return out


def fogsim_run(run_dir: Path, over: list[str]) -> list[str]:
    """The ``fogsim run`` command of the scale scenario with ``over`` as ``--set``s."""
    fogsim = str(Path(sys.executable).with_name("fogsim"))
    cmd = [fogsim, "run", str(SCENARIO), "--out", str(run_dir), "--quiet", "--overwrite"]
    return [*cmd, *(a for o in over for a in ("--set", o))]


def median_after_first(seconds: list[float]) -> float:
    return statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]


# --- the three ways to run a row (children) ------------------------------------
def child_floor(args: argparse.Namespace) -> None:
    """The client work of fogsim's rounds in one process loop: no Flower, no Ray."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.supercore.task_identity import TaskIdentity

    from clients.fog_client import reply_train
    from fogsim.fleet import build_fleet
    from fogsim.flower.server_app import initial_model
    from fogsim.scenario import load_scenario
    from fogsim.strategies import build_strategy

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # to build Messages
    # one thread, as each client actor has: two on two busy cores measured 7x slower
    torch.set_num_threads(1)
    sc = load_scenario(SCENARIO, args.set)
    strategy = build_strategy(sc, build_fleet(sc.fleet, sc.run.seed))
    mailboxes = list(range(sc.simulation.flower_nodes))

    class Grid:  # all the strategy asks of a grid
        def get_node_ids(self) -> list[int]:
            return mailboxes

    arrays, times = ArrayRecord(initial_model(sc).state_dict()), []
    for rnd in range(1, sc.run.rounds + 1):
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(), Grid()))
        t0 = time.perf_counter()
        replies = [reply_train(m) for m in messages]
        times.append(time.perf_counter() - t0)
        arrays = strategy.aggregate_train(rnd, replies)[0] or arrays
    Path(args.out).write_text(json.dumps({"round_s": times}))


def child_flower(args: argparse.Namespace) -> None:
    """Plain Flower FedAvg (its own start loop and sampling), dense local training."""
    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    from clients.fog_client import local_data
    from fogsim.data import load_dataset
    from fogsim.device.models import FogNet
    from fogsim.device.training import evaluate, make_optimizer, train_epochs
    from fogsim.flower.engine import launch
    from fogsim.flower.server_app import initial_model
    from fogsim.flower.wire import ClientSpec
    from fogsim.scenario import load_scenario

    sc = load_scenario(SCENARIO, args.set)
    spec, t, nodes = ClientSpec.of(sc), sc.train, sc.fleet.nodes
    k, threads = sc.simulation.clients_per_round, sc.simulation.torch_threads
    client = ClientApp()

    @client.train()
    def _train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(threads)
        node = int(context.node_config["partition-id"])
        x, y = local_data(spec, node)
        model = FogNet(sc.arch.channels, sc.arch.hidden, sc.arch.in_shape, sc.arch.num_classes)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        opt = make_optimizer(t.optimizer, model.parameters(), t.lr, t.momentum)
        loss = train_epochs(
            model, x, y, epochs=t.local_epochs, batch_size=min(t.batch_size, len(x)), optimizer=opt
        )
        metrics = MetricRecord({"num-examples": len(x), "train-loss": loss})
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
        return Message(content, reply_to=msg)

    server, stamps = ServerApp(), []

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        ds = load_dataset(sc.data.dataset, sc.data.path)
        test_x, test_y = ds.tensors(ds.test_x, ds.test_y)
        model = initial_model(sc)

        def evaluate_fn(rnd: int, arrays: ArrayRecord) -> MetricRecord:
            model.load_state_dict(arrays.to_torch_state_dict())
            acc, loss = evaluate(model, test_x, test_y)
            stamps.append(time.perf_counter())  # before round 1, then after each round
            return MetricRecord({"accuracy": acc, "loss": loss})

        strategy = FedAvg(
            fraction_train=k / nodes, fraction_evaluate=0.0, min_train_nodes=k,
            min_evaluate_nodes=0, min_available_nodes=k,
        )  # fmt: skip
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=sc.run.rounds,
            evaluate_fn=evaluate_fn,
        )

    launch(server, client, nodes, sc.simulation, Path(args.out).parent)
    times = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    Path(args.out).write_text(json.dumps({"round_s": times}))


# --- the table ------------------------------------------------------------------
def measure_row(row: str, rounds: int, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    nodes, per_round, in_flight, draws = parse_row(row)
    sim = load_scenario(
        SCENARIO, overrides(nodes, per_round, rounds, "fedavg", in_flight)
    ).simulation
    out: dict[str, Any] = {
        "nodes": nodes,
        "per_round": per_round,
        "in_flight": in_flight,
        "samples_per_node": draws,
        "messages": sim.messages(per_round),  # Flower messages per round (cohorts)
        "cohort": sim.cohort(per_round),
    }
    py = sys.executable
    for strategy in ("mask-union", "fedavg"):
        over = overrides(nodes, per_round, rounds, strategy, in_flight, draws)
        sets = [a for o in over for a in ("--set", o)]
        run_dir = work / f"{row}-{strategy}"
        cmd = fogsim_run(run_dir, over)
        wall, rss, pss, _ = run_measured(cmd, work / f"{row}-{strategy}.log")
        rows = load(run_dir)["rounds"]
        sec = median_after_first([float(r["wall_s"]) for r in rows])
        node_rows = [n for n in load(run_dir)["nodes"] if n["status"] == "ok"]
        samples = [n["num_examples"] for n in node_rows]
        # the clients' own compute per round (sum of their train() seconds in the actors):
        # against the floor it tells contention for the cores from messaging overhead
        compute = [sum(n["time_s"] for n in node_rows if n["round"] == r["round"]) for r in rows]
        floor_json = work / f"{row}-{strategy}-floor.json"
        me = [py, __file__, "--child", "floor", "--out", str(floor_json)]
        run_measured([*me, *sets], work / f"{row}-{strategy}-floor.log")
        floor = median_after_first(json.loads(floor_json.read_text())["round_s"])
        out[strategy] = {
            "sec": sec,
            "wall": wall,
            "rss": rss,
            "pss": pss,
            "floor": floor,
            "samples": statistics.mean(samples),
            "work": median_after_first(compute),
        }
        print(f"  {row} {strategy}: {sec:.2f} s/round, floor {floor:.2f}", flush=True)
    out["flower"] = None
    if nodes > FLOWER_MAX_NODES:
        return out
    flower_json = work / f"{row}-flower.json"
    me = [py, __file__, "--child", "flower", "--out", str(flower_json)]
    over = overrides(nodes, per_round, rounds, "fedavg", None, draws)
    sets = [a for o in over for a in ("--set", o)]
    wall, rss, pss, _ = run_measured([*me, *sets], work / f"{row}-flower.log")
    sec = median_after_first(json.loads(flower_json.read_text())["round_s"])
    out["flower"] = {"sec": sec, "wall": wall, "rss": rss, "pss": pss}
    print(f"  {row} flower: {sec:.2f} s/round", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 nodes, 4 rounds")
    parser.add_argument(
        "--rows", nargs="*", help="nodes:per_round[:max_in_flight[:samples_per_node]] ..."
    )
    parser.add_argument("--rounds", type=int, help="rounds per run (default 6, quick 4)")
    parser.add_argument("--out", type=Path, help="keep run directories and logs here")
    parser.add_argument("--repeats", type=int, default=1, help="measure every row N times")
    parser.add_argument(
        "--json",
        type=Path,
        help="write the table as benchmarks/results/<stem of JSON>.json, and a copy at JSON",
    )
    parser.add_argument("--child", choices=["floor", "flower"], help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "floor":
        return child_floor(args)
    if args.child == "flower":
        return child_flower(args)
    rows = args.rows or (QUICK if args.quick else FULL)
    rounds = args.rounds or (4 if args.quick else 6)
    work = args.out or Path(tempfile.mkdtemp(prefix="fogsim-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"runs and logs in {work}", flush=True)
    repeats = [
        [measure_row(row, rounds, work / f"repeat{i}") for row in rows] for i in range(args.repeats)
    ]
    for results in repeats:
        print_table(results, rounds)
    if args.json:
        name = args.json.stem
        path = write_results(name, json_rows(repeats), [], rounds=rounds, row_specs=rows)
        if path.resolve() != args.json.resolve():
            args.json.write_text(path.read_text())
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
