"""Your own data set as a ``.npz`` (any image size, any number of classes): loading,
its errors, the scenario fields it needs, and a real run on colour images."""

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fogsim.cli import app
from fogsim.data import DatasetError, load_npz
from fogsim.device.models import FogNet
from fogsim.scenario import ScenarioError, load_scenario
from fogsim.study.results import load

runner = CliRunner()


def blobs(n: int, size: int = 16, classes: int = 5, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Colour images (N, H, W, 3) whose class is where a bright square sits."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 60, (n, size, size, 3)).astype(np.uint8)
    step = size // classes
    for i, c in enumerate(y):
        x[i, c * step : (c + 1) * step, :, c % 3] = 250
    return x, y


@pytest.fixture
def npz(tmp_path: Path) -> Path:
    (xt, yt), (xs, ys) = blobs(1500), blobs(300, seed=1)
    path = tmp_path / "blobs.npz"
    np.savez(path, x_train=xt, y_train=yt, x_test=xs, y_test=ys)
    return path


NPZ_SETS = ["data.dataset='npz'", "data.image_shape=[3, 16, 16]", "data.num_classes=5"]


def test_channels_last_colour_images_load_normalised(npz: Path) -> None:
    ds = load_npz(npz)
    assert ds.image_shape == (3, 16, 16) and ds.train_x.shape == (1500, 3, 16, 16)
    x, y = ds.tensors(ds.train_x, ds.train_y)
    assert tuple(x.shape) == (1500, 3, 16, 16) and y.dtype == torch.int64
    per_channel = x.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(per_channel.std(1), torch.ones(3), atol=1e-3)
    out = FogNet((4,), (8,), ds.image_shape, num_classes=5)(x[:2])
    assert tuple(out.shape) == (2, 5)


def test_x_and_y_only_hold_out_a_sixth(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((600, 10, 12)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(600) % 3)
    ds = load_npz(tmp_path / "d.npz")
    assert (len(ds.train_y), len(ds.test_y)) == (500, 100) and ds.image_shape == (1, 10, 12)
    assert sorted(np.concatenate([ds.train_y, ds.test_y]).tolist()) == sorted(
        (np.arange(600) % 3).tolist()
    )


@pytest.mark.parametrize(
    ("arrays", "words"),
    [
        ({"images": np.zeros((4, 8, 8))}, "holds ['images']; expected x_train"),
        ({"x": np.zeros((4, 8)), "y": np.zeros(4, int)}, "train images of shape (4, 8); expected"),
        ({"x": np.zeros((4, 8, 8)), "y": np.zeros(5, int)}, "x/y labels of shape (5,)"),
        ({"x": np.zeros((4, 8, 8)), "y": np.zeros(4)}, "type float64"),
        ({"x": np.zeros((4, 8, 8), bool), "y": np.zeros(4, int)}, "images are bool"),
        # floats must be in [0, 1] (NaN is not), and there must be images at all
        ({"x": np.full((6, 8, 8), 255.0), "y": np.zeros(6, int)}, "float in [255, 255]"),
        ({"x": np.full((6, 8, 8), np.nan), "y": np.zeros(6, int)}, "float in [nan, nan]"),
        ({"x": np.zeros((0, 8, 8)), "y": np.zeros(0, int)}, "no train images"),
    ],
)
def test_unusable_files_are_refused_naming_the_file(tmp_path: Path, arrays, words) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=str(tmp_path / "bad.npz")) as e:
        load_npz(tmp_path / "bad.npz")
    assert words in str(e.value)


def test_a_file_that_is_no_npz_says_so(tmp_path: Path) -> None:
    (tmp_path / "text.npz").write_text("x,y\n1,2\n")
    with pytest.raises(DatasetError, match="text.npz: not an .npz file"):
        load_npz(tmp_path / "text.npz")


def test_scenario_fields_for_npz(tiny_scenario: Path, npz: Path) -> None:
    sc = load_scenario(tiny_scenario, [*NPZ_SETS, f"data.path='{npz}'", "model.arch='cnn'"])
    assert sc.arch.in_shape == (3, 16, 16) and sc.arch.num_classes == 5
    assert sc.arch.param_shapes()[0] == (16, 3, 5, 5) and sc.arch.param_shapes()[-1] == (5,)
    with pytest.raises(ScenarioError, match="dataset 'npz' needs path"):
        load_scenario(tiny_scenario, NPZ_SETS)
    with pytest.raises(ScenarioError, match="mnist has \\[1, 28, 28\\] images"):
        load_scenario(tiny_scenario, ["data.num_classes=12"])
    too_small = "3 conv blocks on the 4x4 image give conv 3 a 1x1 input, .* at most 0"
    with pytest.raises(ScenarioError, match=too_small):
        load_scenario(
            tiny_scenario,
            [*NPZ_SETS[:2], f"data.path='{npz}'", "data.image_shape=[3, 4, 4]"]
            + ["model.arch='cnn'", "model.channels=[2, 2, 2]"],
        )


@pytest.mark.parametrize(
    ("sets", "words"),
    [
        (["data.image_shape=[1, 16, 16]"], "data.image_shape = [1, 16, 16]: "),
        (["data.num_classes=4"], "data.num_classes = 4: "),
    ],
)
def test_a_file_that_disagrees_with_the_scenario_exits_2(tiny_scenario, npz, sets, words):
    over = [*NPZ_SETS, f"data.path='{npz}'", *sets]
    result = runner.invoke(
        app, ["validate", str(tiny_scenario), *[a for o in over for a in ("--set", o)]]
    )
    assert result.exit_code == 2 and words in result.output and str(npz) in result.output


@pytest.mark.slow  # a real Flower + Ray run
def test_real_run_on_colour_images_of_five_classes(tiny_scenario: Path, npz: Path, tmp_path):
    sets = [
        *NPZ_SETS,
        f"data.path='{npz}'",
        "model.arch='cnn'",
        "model.channels=[4]",
        "model.hidden=[16]",
        "strategy.name='mask-union'",
        "fleet.classes.1.memory='302KiB'",  # narrowest 253 KiB, dense 351 KiB at batch 16
        "simulation.evaluate_clients=0",
    ]
    args = ["run", str(tiny_scenario), "--out", str(tmp_path / "out"), "-q"]
    result = runner.invoke(app, args + [a for o in sets for a in ("--set", o)])
    assert result.exit_code == 0, result.output
    run = load(tmp_path / "out")
    assert run["rounds"][-1]["accuracy"] > 0.5, "well above chance (0.2)"
    small = [n for n in run["nodes"] if n["class"] == "small"]
    big = [n for n in run["nodes"] if n["class"] == "big"]
    assert small and max(n["params"] for n in small) < min(n["params"] for n in big)
    assert all(n["peak_memory"] <= n["budget_bytes"] for n in run["nodes"])
