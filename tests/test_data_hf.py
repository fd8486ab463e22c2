"""A saved Hugging Face dataset (``dataset = "hf"``, read with ``datasets.load_from_disk``)
and scikit-learn's digits (``dataset = "digits"``): loading, the held-out split, the
errors, and a whole run in this process on each."""

from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage
from sklearn.datasets import load_digits as sklearn_digits
from typer.testing import CliRunner

from fogsim.checks import check_data
from fogsim.cli import app
from fogsim.data import DatasetError, load_dataset
from fogsim.datasets.hf import load_saved_hf
from fogsim.scenario import ScenarioError, load_scenario
from fogsim.study.results import load
from tests.topology.local import run_local

runner = CliRunner()
HF_SETS = ["data.dataset='hf'", "data.image_shape=[3, 10, 12]", "data.num_classes=3"]


def pictures(n: int, seed: int, mode: str = "RGB") -> tuple[list[np.ndarray], list[int]]:
    """``n`` 10x12 images whose class (0..2) is a bright band in one channel (grey: one
    row band per class)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        label = i % 3
        x = rng.integers(0, 60, (10, 12, 3)).astype(np.uint8)
        x[label * 3 : label * 3 + 3, :, label] = 250
        images.append(x if mode == "RGB" else x.max(axis=2))
        labels.append(label)
    return images, labels


def saved(path: Path, splits: dict[str, int], mode: str = "RGB", **columns) -> dict:
    """A ``DatasetDict`` of ``splits`` (name: images), saved to ``path``; returns the
    arrays written per split."""
    names = {"image": "img", "label": "label"} | columns
    features = Features({names["image"]: Image(), names["label"]: ClassLabel(num_classes=3)})
    written, parts = {}, {}
    for seed, (split, n) in enumerate(splits.items()):
        images, labels = pictures(n, seed, mode)
        written[split] = (np.stack(images), np.array(labels))
        parts[split] = Dataset.from_dict(
            {
                names["image"]: [PILImage.fromarray(x, mode) for x in images],
                names["label"]: labels,
            },
            features=features,
        )
    DatasetDict(parts).save_to_disk(str(path))
    return written


def test_a_saved_dataset_dict_loads_with_exact_pixels(tmp_path: Path) -> None:
    written = saved(tmp_path / "hf", {"train": 9, "test": 6, "validation": 3})
    ds = load_saved_hf(tmp_path / "hf")
    assert ds.name == "hf" and ds.image_shape == (3, 10, 12)
    assert ds.train_x.shape == (9, 3, 10, 12) and ds.test_x.shape == (6, 3, 10, 12)
    assert ds.train_x.dtype == np.uint8 and ds.train_y.dtype == np.int64
    assert np.array_equal(ds.train_x, written["train"][0].transpose(0, 3, 1, 2))
    assert np.array_equal(ds.test_y, written["test"][1]), "the test split, not validation"
    assert len(ds.mean) == 3


def test_a_saved_dataset_without_test_split_holds_out_a_sixth(tmp_path: Path) -> None:
    images, labels = pictures(24, 0, mode="L")
    Dataset.from_dict(
        {"pixels": [PILImage.fromarray(x, "L") for x in images], "labels": labels},
        features=Features({"pixels": Image(), "labels": Value("int64")}),
    ).save_to_disk(str(tmp_path / "one"))
    ds = load_saved_hf(tmp_path / "one")
    assert ds.image_shape == (1, 10, 12) and (len(ds.train_y), len(ds.test_y)) == (20, 4)
    everything = np.concatenate([ds.train_x, ds.test_x]).reshape(24, -1)
    assert sorted(map(bytes, everything)) == sorted(bytes(x.reshape(-1)) for x in images)


@pytest.mark.parametrize(
    "case, message",
    [
        ("no train", "splits ['test']; a 'train' split is needed"),
        ("two labels", "expected exactly one label column"),
        ("sizes", "images of different shapes"),
        ("rgba", "with C = 1 or 3"),
        ("not saved", "not a saved Hugging Face dataset"),
    ],
)
def test_a_broken_saved_dataset_is_refused_naming_the_path(
    tmp_path: Path, case: str, message: str
) -> None:
    path = tmp_path / "hf"
    if case == "no train":
        saved(path, {"test": 3})
    elif case == "two labels":
        Dataset.from_dict(
            {
                "image": [PILImage.fromarray(x) for x in pictures(3, 0)[0]],
                "a": [0] * 3,
                "b": [1] * 3,
            },
            features=Features(
                {"image": Image(), "a": ClassLabel(num_classes=2), "b": ClassLabel(num_classes=2)}
            ),
        ).save_to_disk(str(path))
    elif case in ("sizes", "rgba"):
        shapes = [(4, 4, 3), (5, 4, 3)] if case == "sizes" else [(4, 4, 4)] * 2
        mode = "RGB" if case == "sizes" else "RGBA"
        images = [PILImage.fromarray(np.zeros(s, np.uint8), mode) for s in shapes]
        Dataset.from_dict(
            {"image": images, "label": [0, 1]},
            features=Features({"image": Image(), "label": ClassLabel(num_classes=2)}),
        ).save_to_disk(str(path))
    else:
        path.mkdir()
    with pytest.raises(DatasetError) as e:
        load_dataset("hf", str(path))
    assert str(e.value).startswith(f"{path}") and message in str(e.value)


@pytest.mark.parametrize("dataset", ["images", "npz", "mnist"])
def test_a_saved_dataset_under_another_name_says_set_hf(tmp_path: Path, dataset: str) -> None:
    saved(tmp_path / "hf", {"train": 3})
    with pytest.raises(DatasetError, match="a saved Hugging Face dataset .*set dataset = 'hf'"):
        load_dataset(dataset, str(tmp_path / "hf"))


def test_a_run_on_a_saved_dataset_in_process(tiny_scenario: Path, tmp_path: Path) -> None:
    saved(tmp_path / "hf", {"train": 150, "test": 30})
    sc = load_scenario(tiny_scenario, [*HF_SETS, f"data.path='{tmp_path / 'hf'}'"])
    check_data(sc)
    run_local(sc, tmp_path / "out")
    rounds = load(tmp_path / "out")["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[-1]["accuracy"] > 0.6, "well above chance (1/3)"


def test_digits_are_scikit_learns_images_scaled_to_bytes() -> None:
    ds = load_dataset("digits")
    bunch = sklearn_digits()
    assert ds.image_shape == (1, 8, 8) and (len(ds.train_y), len(ds.test_y)) == (1498, 299)
    assert ds.train_x.dtype == np.uint8 and ds.train_x.max() == 255
    both = np.concatenate([ds.train_x, ds.test_x]).astype(float) * 16 / 255
    assert sorted(map(bytes, np.round(both).astype(np.uint8).reshape(1797, -1))) == sorted(
        map(bytes, bunch.images.astype(np.uint8).reshape(1797, -1))
    ), "every image once, pixels 0..16 scaled by 255/16"
    assert (
        np.bincount(np.concatenate([ds.train_y, ds.test_y])).tolist()
        == np.bincount(bunch.target).tolist()
    )


def test_digits_scenario_takes_their_shape_and_refuses_others(tiny_scenario: Path) -> None:
    sc = load_scenario(tiny_scenario, ["data.dataset='digits'"])
    assert sc.arch.in_shape == (1, 8, 8) and sc.arch.num_classes == 10
    with pytest.raises(ScenarioError, match=r"digits has \[1, 8, 8\] images in 10 classes"):
        load_scenario(tiny_scenario, ["data.dataset='digits'", "data.image_shape=[1, 28, 28]"])
    result = runner.invoke(
        app,
        [
            "validate",
            str(tiny_scenario),
            "--set",
            "data.dataset='digits'",
            "--set",
            "data.path='/tmp'",
        ],
    )
    assert result.exit_code == 2 and "ships inside scikit-learn; leave path out" in result.output


def test_a_run_on_digits_in_process(tiny_scenario: Path, tmp_path: Path) -> None:
    sc = load_scenario(tiny_scenario, ["data.dataset='digits'", "run.rounds=3"])
    check_data(sc)
    run_local(sc, tmp_path / "out")
    rounds = load(tmp_path / "out")["rounds"]
    assert rounds[-1]["accuracy"] > 0.35, "well above chance (1/10; labels paired with images)"
