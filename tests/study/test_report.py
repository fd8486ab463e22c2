"""report / compare / sweep on tiny real runs (2 Flower + Ray runs in all, ~40 s)."""

import json
import re
import shutil
from pathlib import Path

import matplotlib.image as mpimg
import pytest
from typer.testing import CliRunner

from fogsim.cli import app
from fogsim.study.compare import metrics_table, run_metrics
from fogsim.study.plots import DPI, FIGSIZE, plot_round_time
from fogsim.study.results import load, read_csv
from fogsim.study.series import slowest_class
from fogsim.study.sweep import mean_std, parse_grid, plan, split_values
from tests.conftest import TINY

runner = CliRunner()
PIXELS = (int(FIGSIZE[1] * DPI), int(FIGSIZE[0] * DPI))


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def scenario_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sc") / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="session")
def run_dir(scenario_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = invoke("run", scenario_file, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    return out


def assert_png(path: Path) -> None:
    assert path.stat().st_size > 1000
    assert mpimg.imread(path).shape[:2] == PIXELS


@pytest.mark.slow  # a real Flower + Ray run
def test_report_writes_plots_and_tables_with_run_numbers(run_dir: Path) -> None:
    result = invoke("report", run_dir)
    assert result.exit_code == 0, result.output
    run = load(run_dir)
    md = (run_dir / "report.md").read_text()
    for name in ("accuracy", "traffic", "round_time", "classes", "participation"):
        assert_png(run_dir / f"{name}.png")
        assert f"]({name}.png)" in md
    for r in run["rounds"]:
        row = f"| {r['round']} | {r['accuracy']:.4f} | {r['loss']:.4f} |"
        assert row in md
        assert f"| {r['bytes_up']} | {r['bytes_down']} |" in md
        assert f"| {r['sim_time_s']:.2f} |" in md  # the simulated round time is reported
    # per class: size from fleet.csv, node-rounds and last params from nodes.csv
    for cls in {f["class"] for f in run["fleet"]}:
        size = sum(f["class"] == cls for f in run["fleet"])
        rows = [n for n in run["nodes"] if n["class"] == cls]
        assert re.search(rf"\| {cls} \| {size} \| .*\| {len(rows)} \|", md), md
        peak = max(n["peak_memory"] for n in rows)  # modelled peak, from nodes.csv
        assert re.search(rf"\| {cls} \| .*\| {peak} \|", md), (peak, md)
        c = run["summary"]["classes"][cls]  # the devices' accuracy, and how many hold one
        assert f"| {c['mean']:.4f} ({c['min']:.4f}) [{c['devices']}] |" in md, md


@pytest.mark.slow  # a real Flower + Ray run
def test_compare_table_and_overlay(run_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "copy"
    shutil.copytree(run_dir, other)
    result = invoke("compare", run_dir, other, "--target", "0.5", "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    rows = read_csv(tmp_path / "cmp" / "compare.csv")
    assert [r["run"] for r in rows] == ["tiny", "copy"]
    run = load(run_dir)
    accs = [r["accuracy"] for r in run["rounds"]]
    assert rows[0]["final_accuracy"] == accs[-1] == run["summary"]["final_accuracy"]
    assert rows[0]["best_accuracy"] == max(accs)
    assert rows[0]["rounds_to_target"] == 1  # tiny reaches 0.5 in round 1
    total = sum(r["bytes_up"] + r["bytes_down"] for r in run["rounds"])
    assert rows[0]["total_bytes"] == total
    assert rows[0]["compression"] == 1.0  # fedavg: every node holds the dense model
    held = {k: c for k, c in run["summary"]["classes"].items() if c["devices"]}
    assert held  # per class: the validation figures beside the test ones
    for cls, c in held.items():
        assert (rows[0][f"acc_{cls}"], rows[0][f"val_{cls}"]) == (c["mean"], c["validation_mean"])
        assert rows[0][f"val_{cls}_min"] == c["validation_min"]
        assert rows[0][f"held_{cls}"] == c["devices"]  # the devices the figures cover
    table = metrics_table([run_metrics(run_dir, 0.5)], 0.5)  # what compare prints
    for cls, c in held.items():
        cell = f"{c['mean']:.4f} ({c['min']:.4f}) [{c['devices']}]"
        assert table.rows[0][table.headers.index(f"{cls} devices: mean (min) [devices]")] == cell
    assert_png(tmp_path / "cmp" / "compare_accuracy.png")
    for name in ("compare.csv", "compare_accuracy.png", "compare_cost.png", "compare_cloud.png"):
        assert name in result.output.replace("\n", "")  # it says every file it wrote
    never = run_metrics(run_dir, 0.999)
    assert never["rounds_to_target"] is None
    # default --out: the first run's parent
    assert invoke("compare", run_dir).exit_code == 0
    assert (run_dir.parent / "compare.csv").exists()


def test_round_time_plot_of_a_class_whose_rounds_took_no_time(tmp_path: Path) -> None:
    """A buffered merge at its window's opening takes 0 s; a class that set only such
    rounds has no marker to draw (the report once crashed there, exit 1, no report)."""
    run = {
        "rounds": [{"round": 1, "sim_time_s": 0.0}, {"round": 2, "sim_time_s": 1.5}],
        "nodes": [
            {"round": 1, "class": "camera", "sim_time_s": 0.4},
            {"round": 2, "class": "sensor", "sim_time_s": 1.5},
        ],
        "fleet": [],
    }
    assert_png(plot_round_time(run, tmp_path / "round_time.png"))


def test_bad_run_dirs_exit_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for cmd in ("report", "compare"):
        for d, msg in ((tmp_path / "missing", "no such run"), (tmp_path / "empty", "rounds.csv")):
            result = invoke(cmd, d)
            assert result.exit_code == 2 and msg in result.output, result.output


def test_grid_parsing() -> None:
    assert split_values("0.05,0.1") == ["0.05", "0.1"]
    assert split_values("[64,32],[8]") == ["[64,32]", "[8]"]
    assert parse_grid(["strategy.name=fedavg,fedavg"]) == [("strategy.name", ["fedavg"])]


def test_sweep_validates_every_point_before_running(scenario_file: Path, tmp_path: Path) -> None:
    result = invoke(
        "sweep", scenario_file, "--grid", "train.lr=0.1,-1", "--out", tmp_path / "s", "-q"
    )
    assert result.exit_code == 2 and "train.lr=-1" in result.output, result.output
    assert not (tmp_path / "s").exists()
    result = invoke("sweep", scenario_file, "--grid", "strategy.name=fedavg,nope", "-q")
    assert result.exit_code == 2 and "strategy.name=nope" in result.output
    assert invoke("sweep", scenario_file, "--grid", "train.lr").exit_code == 2


@pytest.mark.slow  # a real Flower + Ray run
def test_sweep_resumes_and_summarizes(scenario_file: Path, run_dir: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    finished = sweep / "train.lr=0.1__seed=7"
    shutil.copytree(run_dir, finished)  # a finished run (has summary.json): kept as is
    sets = ["run.rounds=1", "simulation.evaluate_clients=0"]
    planned = dict(plan(scenario_file, sets, parse_grid(["train.lr=0.05,0.1"]), 1))
    made_by_this_sweep = [s for p, s in planned.items() if p.name == finished.name][0]
    (finished / "scenario.json").write_text(json.dumps(made_by_this_sweep.model_dump(mode="json")))
    stamp = (finished / "rounds.csv").stat().st_mtime_ns
    unfinished = sweep / "train.lr=0.05__seed=7"
    unfinished.mkdir()
    (unfinished / "rounds.csv").write_text("round,accuracy\n1,0.0\n")  # no summary: redone
    args = ["sweep", scenario_file, "--grid", "train.lr=0.05,0.1", "--set", "run.rounds=1"]
    result = invoke(*args, "--set", "simulation.evaluate_clients=0", "--out", sweep, "-q")
    assert result.exit_code == 0, result.output
    assert (finished / "rounds.csv").stat().st_mtime_ns == stamp
    redone = load(unfinished)
    assert redone["summary"]["rounds"] == 1 and redone["scenario"]["train"]["lr"] == 0.05
    assert redone["scenario"]["run"]["name"] == unfinished.name
    rows = read_csv(sweep / "sweep.csv")
    assert [r["train.lr"] for r in rows] == [0.05, 0.1]
    assert rows[0]["final_accuracy_mean"] == redone["rounds"][-1]["accuracy"]
    assert rows[1]["final_accuracy_mean"] == load(run_dir)["summary"]["final_accuracy"]
    assert rows[0]["final_accuracy_std"] == ""  # one repeat: no spread
    for cls, c in redone["summary"]["classes"].items():  # a point is chosen by these
        assert rows[0][f"val_{cls}_mean"] == (
            "" if c["validation_mean"] is None else c["validation_mean"]
        )
    assert len(read_csv(sweep / "compare.csv")) == 2
    assert_png(sweep / "sweep_accuracy.png")


def test_sweep_refuses_runs_made_with_another_scenario(scenario_file: Path, tmp_path: Path):
    """A run in --out from the same sweep with other --set options is not handed back as
    if it were this sweep's (it would report 2 rounds for a 3-round sweep)."""
    grid = ["--grid", "train.lr=0.1"]
    old = plan(scenario_file, ["run.rounds=2"], parse_grid(grid[1:]), 1)[0]
    stale = tmp_path / "s" / old[0].name
    stale.mkdir(parents=True)
    (stale / "scenario.json").write_text(json.dumps(old[1].model_dump(mode="json")))
    (stale / "rounds.csv").write_text("round,accuracy\n1,0.5\n2,0.6\n")
    (stale / "summary.json").write_text('{"rounds": 2}')
    result = invoke("sweep", scenario_file, *grid, "--set", "run.rounds=3", "--out", stale.parent)
    assert result.exit_code == 2, result.output
    assert "another scenario" in result.output and "run.rounds (2 → 3)" in result.output
    assert "--overwrite" in result.output and (stale / "summary.json").exists()


def test_sweep_plan_names_and_seeds(scenario_file: Path) -> None:
    runs = plan(scenario_file, [], parse_grid(["train.lr=0.05,0.1"]), repeat=2)
    names = [p.name for p, _ in runs]
    assert names == [
        "train.lr=0.05__seed=7",
        "train.lr=0.05__seed=8",
        "train.lr=0.1__seed=7",
        "train.lr=0.1__seed=8",
    ]
    assert [(s.train.lr, s.run.seed) for _, s in runs][1] == (0.05, 8)


def test_report_compares_each_node_with_its_own_budget(scenario_file: Path, tmp_path: Path):
    """Budgets drawn per node (memory_max): fleet.csv holds each node's own budget, and
    the report's peak / budget is per node, so a big node of a class is not measured
    against the class's smallest budget (a violation that did not happen)."""
    from fogsim.fleet import build_fleet
    from fogsim.scenario import load_scenario
    from fogsim.study.report import class_table
    from fogsim.study.results import RunWriter
    from fogsim.study.series import load_run as load_report_run

    sc = load_scenario(scenario_file, ["fleet.classes.1.memory_max='4MiB'"])
    fleet = build_fleet(sc.fleet, sc.run.seed)
    writer = RunWriter(tmp_path)
    writer.fleet_table(fleet)
    assert [r["budget_bytes"] for r in read_csv(tmp_path / "fleet.csv")] == fleet.budgets.tolist()
    small = [n for n in range(fleet.num_nodes) if fleet.device(n).name == "small"]
    biggest = max(small, key=fleet.budget)
    assert fleet.budget(biggest) > 2 * sc.fleet.classes[1].memory  # spread enough to matter
    writer.rounds.append([{"round": 1, "accuracy": 0.5, "loss": 1.0}])
    row = {"round": 1, "node": biggest, "class": "small", "status": "ok", "num_examples": 1}
    peak = int(0.75 * fleet.budget(biggest))
    writer.nodes.append([{**row, "budget_bytes": fleet.budget(biggest), "peak_memory": peak}])
    table = class_table(load_report_run(tmp_path))
    cells = dict(zip(table.headers, next(r for r in table.rows if r[0] == "small"), strict=True))
    assert cells["peak / own budget (max)"] == "75.0%"  # a tenth: 100.4% is not "100%"
    low, high = min(fleet.budget(n) for n in small), fleet.budget(biggest)
    assert cells["budget bytes"] == f"{low}..{high}"


@pytest.mark.parametrize("strategy", ["heterofl", "mask-union"])
@pytest.mark.parametrize("between", [False, True])
def test_report_says_why_a_class_sat_out(
    scenario_file: Path, tmp_path: Path, strategy: str, between: bool
) -> None:
    """A class whose budgets hold no model gets the reason beside its participation:
    below the narrowest model (1 KiB), or, where the strategy's clients hold DynHP's
    arrays (mask-union with own masks), below the narrowest model beside them
    (``between``: a budget HeteroFL's clients train in and these cannot, which once
    got no reason)."""
    from fogsim.device.memory import dynhp_bytes
    from fogsim.fleet import build_fleet
    from fogsim.scenario import load_scenario
    from fogsim.study.report import class_table
    from fogsim.study.results import RunWriter
    from fogsim.study.series import load_run as load_report_run
    from fogsim.units import format_bytes

    chosen = [f"strategy.name='{strategy}'"]
    chosen += ["strategy.params.masks='own'"] if strategy == "mask-union" else []
    sc = load_scenario(scenario_file, chosen)
    budget = sc.narrowest_need() + dynhp_bytes(sc.arch.scaled(0.0)) // 2 if between else 1024
    sc = load_scenario(scenario_file, [*chosen, f"fleet.classes.1.memory={budget}"])
    writer = RunWriter(tmp_path)
    writer.write_json("scenario.json", sc.model_dump(mode="json"))
    writer.fleet_table(build_fleet(sc.fleet, sc.run.seed))
    writer.rounds.append([{"round": 1, "accuracy": 0.5, "loss": 1.0}])
    table = class_table(load_report_run(tmp_path))
    cells = dict(zip(table.headers, next(r for r in table.rows if r[0] == "small"), strict=True))
    if between and strategy == "heterofl":  # width 1 fits: no reason to give
        assert cells["participation"] == "0.0%"
        return
    dynhp = strategy == "mask-union"
    need = format_bytes(sc.narrowest_need(dynhp))
    what = "the narrowest model" + (" with DynHP's arrays" if dynhp else "")
    top = format_bytes(budget)
    assert cells["participation"] == f"0.0% (budget ≤ {top} < {need}, {what})"


def test_energy_in_report_and_compare_from_the_run_files(tmp_path: Path) -> None:
    """Energy columns as a run writes them: per class in the report's table and plot,
    energy to a target and in all in compare.csv (no Ray: the files are written here)."""
    from fogsim.study.report import class_table, write_report
    from fogsim.study.results import RunWriter
    from fogsim.study.series import load_run as load_report_run

    writer = RunWriter(tmp_path / "run")
    rounds = [
        {"round": 1, "accuracy": 0.5, "loss": 1.0, "sim_clock_s": 0.0, "sim_time_s": 10.0},
        {"round": 2, "accuracy": 0.8, "loss": 0.5, "sim_clock_s": 60.0, "sim_time_s": 10.0},
        {"round": 3, "accuracy": 0.9, "loss": 0.4, "sim_clock_s": 120.0, "sim_time_s": 10.0},
    ]
    parts = {"energy_compute_j": 1.0, "energy_radio_j": 2.0, "energy_idle_j": 3.0}
    for r in rounds:
        r.update(energy_j=12.0, energy_j_a=6.0, energy_j_b=6.0, up_a=int(r["round"] > 1), up_b=1)
        row = {"round": r["round"], "status": "ok", "energy_j": 6.0, **parts}
        writer.nodes.append([{**row, "node": 0, "class": "a"}, {**row, "node": 1, "class": "b"}])
    writer.rounds.append(rounds)
    (tmp_path / "run" / "fleet.csv").write_text("node,class,budget_bytes\n0,a,1000\n1,b,1000\n")
    table = class_table(load_report_run(tmp_path / "run"))
    cells = dict(zip(table.headers, table.rows[0], strict=True))
    assert cells["energy J per node-round (mean) [node-rounds]"] == "6 [3]"
    assert cells["energy J (total)"] == "18"
    report = write_report(tmp_path / "run")
    assert {p.name for p in report.plots} >= {"energy.png", "availability.png"}
    assert_png(tmp_path / "run" / "energy.png")
    m = run_metrics(tmp_path / "run", 0.8)
    assert m["energy_to_target_j"] == 24.0 and m["total_energy_j"] == 36.0
    assert m["time_to_target_s"] == 70.0  # on the clock: round 2 started at 60 s, took 10


def copies(run_dir: Path, where: Path, *names: str) -> list[Path]:
    """Copies of a finished run (no new simulation), under ``where``."""
    for name in names:
        shutil.copytree(run_dir, where / name)
    return [where / name for name in names]


@pytest.mark.slow  # the session's real Flower + Ray run
def test_compare_keeps_an_earlier_comparison_of_other_runs(run_dir: Path, tmp_path: Path):
    """The default --out is the runs' parent, a sweep's directory for its runs: comparing
    two of them once replaced the sweep's compare.csv of all its runs, exit 0. Another
    set of runs is refused (exit 2) unless --overwrite; the same set is compared again."""
    a, b, c = copies(run_dir, tmp_path, "a", "b", "c")
    assert invoke("compare", a, b).exit_code == 0
    refused = invoke("compare", a, c)
    assert refused.exit_code == 2 and "--overwrite" in refused.output, refused.output
    assert [r["run"] for r in read_csv(tmp_path / "compare.csv")] == ["a", "b"]
    assert invoke("compare", a, b, "--target", "0.6").exit_code == 0  # the same runs again
    assert invoke("compare", a, c, "--overwrite").exit_code == 0
    assert [r["run"] for r in read_csv(tmp_path / "compare.csv")] == ["a", "c"]
    twice = invoke("compare", a, tmp_path / "b" / ".." / "a", "--out", tmp_path / "t")
    assert twice.exit_code == 2 and "given more than once" in twice.output, twice.output


@pytest.mark.slow  # the session's real Flower + Ray run
def test_compare_says_which_runs_did_not_finish_or_differ(run_dir: Path, tmp_path: Path):
    """An unfinished run's last round once stood as its final accuracy, unmarked, and
    runs of other data sat in one table without a word."""
    full, cut, other = copies(run_dir, tmp_path, "full", "cut", "other")
    (cut / "summary.json").unlink()
    (cut / "devices.csv").unlink()
    lines = (cut / "rounds.csv").read_text().splitlines(keepends=True)
    (cut / "rounds.csv").write_text("".join(lines[:2]))  # 1 of TINY's 2 rounds
    scenario = json.loads((other / "scenario.json").read_text())
    scenario["data"]["alpha"] = 0.5
    (other / "scenario.json").write_text(json.dumps(scenario))
    result = invoke("compare", full, cut, other, "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "1/2 (unfinished)" in said
    assert "note: cut: unfinished (1 of 2 rounds" in said
    assert "note: other differs from full in data.alpha (1.0 → 0.5)" in said
    rows = read_csv(tmp_path / "cmp" / "compare.csv")
    assert [(r["finished"], r["planned_rounds"]) for r in rows][:2] == [("True", 2), ("False", 2)]


@pytest.mark.slow  # the session's real Flower + Ray run
def test_compression_is_over_every_device_holding_a_model(run_dir: Path, tmp_path: Path):
    """compression = dense parameters / the mean of every device's model (devices.csv);
    it was the mean of the last round's sampled nodes, a draw that moved it 2.2x-3.6x
    between two seeds of the same sweep."""
    (run,) = copies(run_dir, tmp_path, "run")
    devices = read_csv(run / "devices.csv")
    dense = devices[0]["params"]
    text = (run / "devices.csv").read_text().splitlines()
    text[1] = text[1].replace(f",{dense},", f",{dense // 4},", 1)  # one device holds 1/4
    (run / "devices.csv").write_text("\n".join(text) + "\n")
    mean = (dense * (len(devices) - 1) + dense // 4) / len(devices)
    assert run_metrics(run, 0.5)["compression"] == pytest.approx(dense / mean)


BROKEN = [  # (file, what to do to it, words of the error)
    ("rounds.csv", lambda t: t.replace("\n1,", "\noops,", 1), "line 2, column round: 'oops'"),
    ("summary.json", lambda t: t[: len(t) // 2], "a JSON file there is not readable"),
    ("rounds.csv", lambda t: "".join(t.splitlines(keepends=True)[:2]), "summary.json says 2"),
]


@pytest.mark.slow  # the session's real Flower + Ray run
@pytest.mark.parametrize(("name", "edit", "words"), BROKEN, ids=["text-cell", "json", "cut"])
def test_a_run_file_edited_by_hand_is_refused_naming_it(run_dir, tmp_path, name, edit, words):
    """A text cell in rounds.csv was once read as a blank ("reached in round 3" for
    round 2), a cut rounds.csv reported beside the run's end-of-run classes, a broken
    summary.json a traceback: each is now exit 2, naming the file."""
    (run,) = copies(run_dir, tmp_path, "run")
    (run / name).write_text(edit((run / name).read_text()))
    for cmd in ("report", "compare"):
        result = invoke(cmd, run)
        assert result.exit_code == 2 and words in result.output, result.output
        assert "Traceback" not in result.output


def test_a_sweep_mean_needs_every_repeat() -> None:
    """A point reaching the target on 1 of 2 seeds once showed that seed's round as its
    mean, level with a point reaching it on both; now blank (reached_target says 1)."""
    assert mean_std([5.0, None]) == (None, None)
    assert mean_std([5.0, 7.0]) == (6.0, pytest.approx(2**0.5))
    assert mean_std([5.0]) == (5.0, None)


@pytest.mark.slow  # the session's real Flower + Ray run
def test_a_narrow_console_folds_no_number(run_dir: Path, monkeypatch) -> None:
    """Rich folded every cell of a table wider than the console: a budget of 49152
    printed as "491" over "52". Tables now turn on their side or print in slices."""
    from fogsim.cli import common

    monkeypatch.setattr(common.out, "width", 60)
    result = invoke("report", run_dir)
    assert result.exit_code == 0, result.output
    printed = set(re.findall(r"[\d.]+", result.output))
    for r in load(run_dir)["rounds"]:
        assert {str(r["bytes_up"]), f"{r['accuracy']:.4f}"} <= printed, r
    for n in load(run_dir)["fleet"]:
        assert str(n["budget_bytes"]) in printed or n["budget_bytes"] < 0, n


def test_a_buffered_rounds_time_is_set_by_its_last_reply_not_its_longest() -> None:
    """In a buffered round the merge is the last reply to arrive (``sim_end_s``); a
    device that trained longer but started versions earlier did not set it (the plot
    once named the longest training's class as the round's straggler), nor did one
    still training when the run ended (``unfinished``: at a fog tier, booked at the
    cloud's merge, after its fog's last reply)."""
    nodes = [
        {"round": 1, "class": "sensor", "sim_time_s": 9.0, "sim_start_s": 0.0, "sim_end_s": 9.0},
        {"round": 1, "class": "camera", "sim_time_s": 2.0, "sim_start_s": 8.0, "sim_end_s": 10.0},
        {"round": 2, "class": "sensor", "sim_time_s": 3.0, "sim_start_s": 10.0, "sim_end_s": 13.0},
    ]
    end = {"round": 2, "class": "camera", "sim_time_s": 9.0, "sim_start_s": 9.0, "sim_end_s": 14.0}
    unfinished = {**end, "status": "unfinished"}
    assert slowest_class({"nodes": [*nodes, unfinished]}) == {1: "camera", 2: "sensor"}
    lock_step = [{k: n[k] for k in ("round", "class", "sim_time_s")} for n in nodes]
    assert slowest_class({"nodes": lock_step}) == {1: "sensor", 2: "sensor"}
