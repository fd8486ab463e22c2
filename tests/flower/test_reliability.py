"""Crash safety and misbehaving clients: kill -9 then --resume, Ctrl-C, injected
faults, non-finite updates, clients refusing to train over budget."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity
from typer.testing import CliRunner

from clients.fog_client import injected_fault, reply_train
from fogsim.cli import app
from fogsim.device.models import FogNet
from fogsim.fleet import build_fleet
from fogsim.flower import cohort
from fogsim.flower.wire import ClientSpec
from fogsim.scenario import load_scenario
from fogsim.strategies import STRATEGIES
from fogsim.study.results import load
from tests.flower.test_federation import strip

runner = CliRunner()
RESUMABLE = [  # mask-union: per-node masks and DynHP state must survive the kill
    "--set",
    "run.rounds=4",
    "--set",
    "strategy.name='mask-union'",
    "--set",
    "dynhp.participations=2",
    "--set",
    "fleet.classes.1.memory='256KiB'",
]


def descendants(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    kids = [int(p) for p in out.split()]
    return kids + [d for k in kids for d in descendants(k)]


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the run and every process under it (Ray's GCS, raylet, workers)."""
    victims = [proc.pid, *descendants(proc.pid)]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def rounds_on_disk(run_dir: Path) -> int:
    path = run_dir / "rounds.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


@pytest.mark.slow  # a real Flower + Ray run
def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(
    tiny_scenario: Path, tmp_path: Path
) -> None:
    whole = tmp_path / "whole"
    result = runner.invoke(app, ["run", str(tiny_scenario), "--out", str(whole), "-q", *RESUMABLE])
    assert result.exit_code == 0, result.output

    killed = tmp_path / "killed"
    ray_tmp = tempfile.mkdtemp(prefix="fk-", dir="/tmp")  # short: Ray's socket paths
    cmd = [sys.executable, "-c", "from fogsim.cli import app; app()"]
    cmd += ["run", str(tiny_scenario), "--out", str(killed), "-q", *RESUMABLE]
    proc = subprocess.Popen(
        cmd, env={**os.environ, "TMPDIR": ray_tmp}, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while rounds_on_disk(killed) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "run too slow"
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()
    finally:
        kill_tree(proc)
    assert 2 <= rounds_on_disk(killed) < 4 and not (killed / "summary.json").exists()
    finished = torch.load(killed / "checkpoint.pt", weights_only=False)["round"]
    before = load(killed)["rounds"][:finished]
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", ray_tmp], capture_output=True, text=True).stdout
    assert left == "", f"processes of the killed run left: {left}"
    shutil.rmtree(ray_tmp, ignore_errors=True)

    again = runner.invoke(app, ["run", str(tiny_scenario), "--out", str(killed), *RESUMABLE])
    assert again.exit_code == 2 and "--resume" in again.output, "an unfinished run is kept"
    changed = ["--set", "train.lr=0.2", "--resume"]
    again = runner.invoke(
        app, ["run", str(tiny_scenario), "--out", str(killed), *RESUMABLE, *changed]
    )
    assert again.exit_code == 2 and "train.lr (0.1 → 0.2)" in again.output

    resumed = runner.invoke(
        app, ["run", str(tiny_scenario), "--out", str(killed), "-q", "--resume", *RESUMABLE]
    )
    assert resumed.exit_code == 0, resumed.output
    a, b = load(whole), load(killed)
    assert [r["round"] for r in b["rounds"]] == [1, 2, 3, 4], "no round lost or doubled"
    assert b["rounds"][:finished] == before, "checkpointed rounds were kept, not rerun"
    assert strip(b["rounds"]) == strip(a["rounds"])
    assert strip(b["nodes"]) == strip(a["nodes"])
    assert b["summary"]["final_accuracy"] == a["summary"]["final_accuracy"]
    done = runner.invoke(
        app, ["run", str(tiny_scenario), "--out", str(killed), "--resume", *RESUMABLE]
    )
    assert done.exit_code == 0 and "already finished" in done.output
    # a finished run resumed with another scenario: refused, naming the field (it once
    # said "already finished", exit 0, as if that run were the one asked for)
    other = runner.invoke(app, ["run", str(tiny_scenario), "--out", str(killed), "--resume",
                                *RESUMABLE, "--set", "train.lr=0.3"])  # fmt: skip
    assert other.exit_code == 2 and "train.lr (0.1 → 0.3)" in other.output, other.output


def driver_log(ray_tmp: str) -> str:
    """What Ray's core worker in the driver logged, in the run's Ray directory."""
    logs = Path(ray_tmp).glob("*/session_*/logs/python-core-driver-*.log")
    return "".join(p.read_text(errors="replace") for p in logs)


ROUNDS = 8  # the signal comes after round 1; the run stops after round 2 or 3
SIGNALS = [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGTERM, True)]


@pytest.mark.slow  # a real Flower + Ray run
@pytest.mark.parametrize(("signum", "group"), SIGNALS, ids=["SIGINT", "SIGTERM", "SIGTERM-group"])
def test_ctrl_c_stops_after_the_round_in_progress(
    tiny_scenario: Path, tmp_path: Path, signum: int, group: bool
) -> None:
    """Ctrl-C, or a SIGTERM (a batch scheduler's), stops the run after the round in
    progress (exit 130), no Ray process left behind; the hint it prints at once
    continues it. (SIGTERM once aborted the run mid-round: ray.init had replaced
    fogsim's handler.) Sent to the whole process group, it ends Ray's workers too: that
    round is not saved (it once was, with every client ``crashed``), and the resume
    redoes it. It ends Ray's raylet as well, and if the driver writes to the raylet's
    object store before the round ends, Ray ends the driver (exit 1, its log says why;
    5 of 14 runs here): the hint, said at once, is all the run can leave, and enough."""
    ray_tmp = tempfile.mkdtemp(prefix="fi-", dir="/tmp")
    cmd = [sys.executable, "-c", "from fogsim.cli import app; app()"]
    cmd += ["run", str(tiny_scenario), "--out", str(tmp_path), "-q"]
    cmd += ["--set", f"run.rounds={ROUNDS}"]
    proc = subprocess.Popen(
        cmd, env={**os.environ, "TMPDIR": ray_tmp}, stderr=subprocess.PIPE, text=True,
        start_new_session=group,
    )  # fmt: skip
    try:
        while rounds_on_disk(tmp_path) < 1 and proc.poll() is None:
            time.sleep(0.02)
        if group:
            time.sleep(0.3)  # into the next round
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        kill_tree(proc)
    if group and proc.returncode == 1:  # Ray ended the driver, not fogsim's own error
        assert "error: " not in err, err
        assert "Terminate the process" in driver_log(ray_tmp), err
    else:
        assert proc.returncode == 130, err
    assert "--resume" in err
    assert group or "Traceback" not in err  # a group's: Flower logs its dead workers'
    assert 1 <= rounds_on_disk(tmp_path) < ROUNDS
    assert all(n["status"] == "ok" for n in load(tmp_path)["nodes"]), "a round of crashes saved"
    left = subprocess.run(["pgrep", "-f", ray_tmp], capture_output=True, text=True).stdout
    assert left == "", f"Ray processes left: {left}"
    shutil.rmtree(ray_tmp, ignore_errors=True)
    # the command it prints is the one that works: no scenario or --set to repeat
    hint = err.split("to continue: ", 1)[1].splitlines()[0].split()
    assert hint[:2] == ["fogsim", "run"] and "--set" not in hint, err
    done = runner.invoke(app, [*hint[1:], "-q"])
    assert done.exit_code == 0, done.output
    assert load(tmp_path)["summary"]["rounds"] == ROUNDS and rounds_on_disk(tmp_path) == ROUNDS


@pytest.mark.slow  # a real Flower + Ray run
def test_a_run_whose_clients_all_fail_stops_with_their_error(tiny_scenario: Path, tmp_path: Path):
    """A plug-in failing on every client: the run stops with exit 1 and the clients'
    error, not with a final accuracy of a model that never learnt."""
    sets = ["run.rounds=6", "faults.crash=1.0", "simulation.evaluate_clients=0"]
    args = ["run", str(tiny_scenario), "--out", str(tmp_path), "-q"]
    result = runner.invoke(app, args + [x for s in sets for x in ("--set", s)])
    assert result.exit_code == 1, result.output
    assert "no client update counted in 3 rounds in a row" in result.output, result.output
    assert "injected crash of node" in result.output and "final accuracy" not in result.output
    assert rounds_on_disk(tmp_path) == 3 and not (tmp_path / "summary.json").exists()
    # resumed, it stays failed (the count of failed rounds once restarted: rounds 4-6
    # ran, and a second resume "finished" the run with a model that never learnt)
    resumed = runner.invoke(app, ["run", "--out", str(tmp_path), "--resume", "-q"])
    assert resumed.exit_code == 1, resumed.output
    assert "rounds 1-3: no client update counted" in " ".join(resumed.output.split())
    assert rounds_on_disk(tmp_path) == 3 and not (tmp_path / "summary.json").exists()


FAULTS = [
    "run.rounds=4",
    "fleet.nodes=12",
    "simulation.clients_per_round=6",
    "simulation.evaluate_clients=0",
    "simulation.min_replies=3",
    "faults.crash=0.1",
    "faults.classes.small.crash=0.25",
    "faults.classes.small.drop=0.25",
    "faults.classes.small.corrupt=0.25",
]
EXPECTED_STATUS = {"": "ok", "crash": "crashed", "drop": "dropped", "corrupt": "rejected"}


@pytest.mark.slow  # a real Flower + Ray run
def test_injected_faults_are_counted_and_never_averaged(tiny_scenario: Path, tmp_path: Path):
    args = ["run", str(tiny_scenario), "--out", str(tmp_path), "-q"]
    result = runner.invoke(app, args + [x for o in FAULTS for x in ("--set", o)])
    assert result.exit_code == 0, result.output
    run = load(tmp_path)
    spec = ClientSpec.of(load_scenario(tiny_scenario, FAULTS))
    for n in run["nodes"]:  # every sampled node has a row saying what became of it
        fault = injected_fault(spec, n["class"], n["node"], n["round"])
        assert n["status"] == EXPECTED_STATUS[fault], n
    statuses = {n["status"] for n in run["nodes"]}
    assert {"ok", "crashed", "dropped", "rejected"} <= statuses, "the seed exercises each fault"
    for n in run["nodes"]:  # a crash says why, in the client's words; nothing else has one
        said = f"injected crash of node {n['node']} in round {n['round']}"
        assert (said in str(n["error"])) == (n["status"] == "crashed"), n
    for r in run["rounds"]:
        mine = [n for n in run["nodes"] if n["round"] == r["round"]]
        assert len(mine) == r["sampled"] == 6
        for status in ("crashed", "dropped", "rejected"):
            assert r[status] == sum(n["status"] == status for n in mine)
        assert r["aggregated"] == sum(n["status"] == "ok" for n in mine)
        assert r["failed"] == r["failed_big"] + r["failed_small"] == 6 - r["aggregated"]
        assert r["kept_previous"] == int(r["aggregated"] < 3)
    kept = [i for i, r in enumerate(run["rounds"]) if r["kept_previous"] and i > 0]
    assert kept, "the seed gives a round with too few good updates"
    for i in kept:  # the model was not touched: same test accuracy as the round before
        assert run["rounds"][i]["accuracy"] == run["rounds"][i - 1]["accuracy"]
    model = torch.load(tmp_path / "model.pt")
    assert all(torch.isfinite(v).all() for v in model.values())
    assert runner.invoke(app, ["report", str(tmp_path)]).exit_code == 0
    md = (tmp_path / "report.md").read_text()
    table = md.split("## per device class", 1)[1].split("## ", 1)[0]
    head, _, *body = [[c.strip() for c in line.strip("|").split("|")] for line in
                      table.strip().splitlines()]  # fmt: skip
    for cls in ("big", "small"):  # the per-class table has each class's failures
        failed = sum(n["class"] == cls and n["status"] != "ok" for n in run["nodes"])
        row = next(r for r in body if r[0] == cls)
        assert row[head.index("failed")] == str(failed), md


@pytest.fixture
def task_identity():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


def train_message(state: dict, node: int, budget: int, spec: str, mode: str = "plain") -> Message:
    """A training message for one fleet node (a cohort of one)."""
    own = {"node": node, "class": "small", "budget": budget, "mode": mode}
    payload = {"arrays": ArrayRecord(state), "config": ConfigRecord(own)}
    shared = ConfigRecord({"server-round": 1, "spec": spec})
    content = cohort.pack([node], [payload], shared)
    return Message(content, dst_node_id=100 + node, message_type=MessageType.TRAIN)


def test_server_rejects_non_finite_and_counts_every_failure(tiny_scenario, task_identity):
    sc = load_scenario(tiny_scenario, ["simulation.min_replies=1"])
    s = STRATEGIES["fedavg"](sc, build_fleet(sc.fleet, 0))
    state = FogNet((), (64, 32)).state_dict()
    budgets = [8 << 20, 8 << 20, 4 << 10, 8 << 20, 8 << 20]  # 4 KiB holds no training step
    sent = [train_message(state, n, b, s.spec) for n, b in enumerate(budgets)]
    for n, m in enumerate(sent):  # as Flower's grid does when it sends them
        m.metadata.__dict__["_message_id"] = f"m{n}"
    s.sent = sent
    s.bytes_down = dict.fromkeys(range(5), 0)
    good, bad, refused = (reply_train(m) for m in sent[:3])
    arrays = {k: v.numpy().copy() for k, v in bad.content["1/arrays"].items()}
    arrays["fcs.0.weight"][0, 0] = np.nan
    bad.content["1/arrays"] = ArrayRecord({k: torch.from_numpy(v) for k, v in arrays.items()})
    crashed = Message(Error(0, "boom"), reply_to=sent[3])  # node 4 never replies
    assert refused.content["2/metrics"]["over-budget"] == 1 and "2/arrays" not in refused.content
    assert refused.content["2/metrics"]["needed-memory"] > 4 << 10
    assert "cannot hold" in refused.content["2/error"]["reason"]

    new, _ = s.aggregate_train(1, [refused, bad, crashed, good])
    status = {r["node"]: r["status"] for r in s.node_rows}
    assert status == {0: "ok", 1: "rejected", 2: "over_budget", 3: "crashed", 4: "timed_out"}
    assert s.round_stats["aggregated"] == 1
    classes = [s.fleet.device(n).name for n in (1, 2, 3, 4)]
    assert s.round_stats["failed_by_class"] == {c: classes.count(c) for c in set(classes)}
    for k, v in new.items():  # only the good update: its weights, untouched
        assert np.array_equal(v.numpy(), good.content["0/arrays"][k].numpy())

    empty = Message(RecordDict({"4/metrics": MetricRecord({"node": 4})}), reply_to=sent[4])
    assert s.aggregate_train(1, [good, empty])[0] is not None  # no weights: rejected, no crash
    assert {r["node"]: r["status"] for r in s.node_rows}[4] == "rejected"

    s.scenario.simulation.min_replies = 2
    assert s.aggregate_train(1, [good, bad]) == (None, None), "too few: keep the previous model"
