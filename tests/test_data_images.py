"""Your own data set as a directory of images by class (``root/train/<class>/<image>``):
loading colour and grey trees, the held-out split, a whole run in this process, one
test per error."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fogsim.checks import check_data
from fogsim.cli import app
from fogsim.data import DatasetError, DatasetNotFoundError, load_dataset, load_image_folder
from fogsim.scenario import ScenarioError, load_scenario
from fogsim.study.results import load
from tests.topology.local import run_local

runner = CliRunner()
CLASSES = ("cherry", "apple", "banana")  # written unsorted: labels follow sorted names


def picture(label: int, rng: np.random.Generator, size: int = 12) -> np.ndarray:
    """A (size, size, 3) colour image whose class is a bright band in channel ``label``."""
    x = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    x[label * 4 : label * 4 + 4, :, label] = 250
    return x


def write_tree(root: Path, per_class: dict[str, int], seed: int = 0) -> dict[Path, np.ndarray]:
    """``root/<split>/<class>/<i>.png`` for ``per_class = {split: images per class}``;
    returns every file's pixels."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, n in per_class.items():
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                written[folder / f"{i:03d}.png"] = x = picture(sorted(CLASSES).index(name), rng)
                Image.fromarray(x, "RGB").save(folder / f"{i:03d}.png")
    return written


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """3 classes of 12x12 RGB images: 50 each to train on, 10 each to test."""
    write_tree(tmp_path / "fruit", {"train": 50, "test": 10})
    return tmp_path / "fruit"


IMAGE_SETS = ["data.dataset='images'", "data.image_shape=[3, 12, 12]", "data.num_classes=3"]


def test_colour_tree_loads_in_sorted_class_order(tmp_path: Path) -> None:
    written = write_tree(tmp_path, {"train": 4, "test": 2})
    ds = load_image_folder(tmp_path)
    assert ds.name == "images" and ds.image_shape == (3, 12, 12)
    assert ds.train_x.shape == (12, 3, 12, 12) and ds.test_x.shape == (6, 3, 12, 12)
    assert ds.train_x.dtype == np.uint8 and ds.train_y.dtype == np.int64
    assert ds.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # apple, banana, cherry
    assert ds.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    for i, (name, n) in enumerate([("apple", 0), ("banana", 2), ("cherry", 3)]):
        pixels = written[tmp_path / "train" / name / f"{n:03d}.png"].transpose(2, 0, 1)
        assert np.array_equal(ds.train_x[4 * i + n], pixels), f"{name} {n}, channels first"
    x, y = ds.tensors(ds.train_x, ds.train_y)
    per_channel = x.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(per_channel.std(1), torch.ones(3), atol=1e-3)


def test_a_class_without_test_images_keeps_its_label(tmp_path: Path) -> None:
    write_tree(tmp_path, {"train": 2, "test": 3})
    shutil.rmtree(tmp_path / "test" / "apple")
    ds = load_image_folder(tmp_path)
    assert ds.train_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.test_y.tolist() == [1, 1, 1, 2, 2, 2], "banana and cherry, as in train"


def test_grey_tree_without_test_split_holds_out_a_sixth(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for label, name in enumerate(("no", "yes")):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(12):  # 10 wide, 8 high; every other suffix in upper case
            x = 40 + 150 * label + rng.integers(0, 9, (8, 10), np.uint8)
            suffix = "PNG" if i % 2 else "png"
            Image.fromarray(x, "L").save(tmp_path / "train" / name / f"{i:02d}.{suffix}")
        (tmp_path / "train" / name / ".DS_Store").write_bytes(b"\0junk")  # skipped
        (tmp_path / "train" / name / "._00.png").write_bytes(b"\0junk")  # macOS: skipped
        (tmp_path / "train" / name / "notes.txt").write_text("not an image")  # skipped
    ds = load_image_folder(tmp_path)
    assert ds.image_shape == (1, 8, 10) and ds.train_x.shape == (20, 8, 10)
    assert (len(ds.train_y), len(ds.test_y)) == (20, 4)
    assert sorted(np.concatenate([ds.train_y, ds.test_y]).tolist()) == [0] * 12 + [1] * 12
    assert set(ds.test_y.tolist()) <= {0, 1} and len(ds.mean) == len(ds.std) == 1
    again = load_image_folder(tmp_path)
    assert np.array_equal(ds.test_x, again.test_x), "the held-out sixth is seeded"
    means = [ds.train_x[ds.train_y == c].mean() for c in (0, 1)]
    assert means[0] < 60 < 180 < means[1], "labels travel with their images"


def test_a_run_on_an_image_tree_in_process(tiny_scenario: Path, tree: Path) -> None:
    """Scenario check, then the whole run: the real round loop and client code on the
    tree's images, Flower's Grid answered in this process (``tests.topology.local``)."""
    sets = [*IMAGE_SETS, f"data.path='{tree}'", "simulation.evaluate_clients=1"]
    sc = load_scenario(tiny_scenario, sets)
    check_data(sc)
    assert sc.arch.in_shape == (3, 12, 12) and sc.arch.num_classes == 3
    run_local(sc, tree.parent / "out")
    rounds = load(tree.parent / "out")["rounds"]
    assert [(r["round"], r["aggregated"]) for r in rounds] == [(1, 4), (2, 4)]
    assert rounds[-1]["accuracy"] > 0.6, "well above chance (1/3)"


def test_scenario_fields_for_images(tiny_scenario: Path, tree: Path) -> None:
    with pytest.raises(ScenarioError, match="dataset 'images' needs path = a directory"):
        load_scenario(tiny_scenario, IMAGE_SETS)
    over = [*IMAGE_SETS[:2], "data.num_classes=2", f"data.path='{tree}'"]
    result = runner.invoke(
        app, ["validate", str(tiny_scenario), *[a for o in over for a in ("--set", o)]]
    )
    assert result.exit_code == 2 and "data.num_classes = 2: " in result.output
    assert str(tree) in result.output and "at least 3" in result.output


def flatten(split: Path) -> None:
    """Images straight in the split folder, no class folders (same names: the last kept)."""
    for folder in sorted(split.iterdir()):
        for image in folder.iterdir():
            image.replace(split / image.name)
        folder.rmdir()


def rgb(path: Path, size: tuple[int, int] = (12, 12), mode: str = "RGB") -> None:
    Image.new(mode, size).save(path)


# (what breaks the good tree, the path the error must name, words it must contain)
BREAKS = {
    "no train folder": (
        lambda r: (r / "train").rename(r / "apples"),
        "",
        "no train folder (found: apples/, test/); expected root/train/<class>/<image>",
    ),
    "no class folders": (
        lambda r: flatten(r / "train"),
        "train",
        "no class folders (found: 000.png, 001.png, 002.png, 003.png, 004.png, ... (50 in all))",
    ),
    "empty class folder": (
        lambda r: (r / "train" / "dates").mkdir() or (r / "train/dates/a.txt").write_text(""),
        "train/dates",
        "no images (found: a.txt); allowed: files ending .png, .jpg",
    ),
    "no test class folders": (
        lambda r: flatten(r / "test"),
        "test",
        "no class folders (found: 000.png, 001.png, 002.png, 003.png, 004.png, ... (10 in all))",
    ),
    "unknown test class": (
        lambda r: (r / "test" / "apple").rename(r / "test" / "zebra"),
        "test",
        "class folders ['zebra'] are not in",
    ),
    "unreadable image": (
        lambda r: (r / "train/banana/007.png").write_bytes(b"\x89PNG\r\n\x1a\n broken"),
        "train/banana/007.png",
        "not a readable image",
    ),
    "mode not allowed": (
        lambda r: rgb(r / "train/apple/000.png", mode="RGBA"),
        "train/apple/000.png",
        "Pillow mode RGBA; allowed: L (grey, 1 channel) or RGB (3 channels)",
    ),
    "mixed sizes": (
        lambda r: rgb(r / "test/cherry/004.png", (12, 10)),
        "test/cherry/004.png",
        "12x10 RGB, but",
    ),
    "mixed modes": (
        lambda r: rgb(r / "train/cherry/001.png", mode="L"),
        "train/cherry/001.png",
        "12x12 L, but",
    ),
}


@pytest.mark.parametrize("case", BREAKS)
def test_a_broken_tree_is_refused_naming_the_path(tree: Path, case: str) -> None:
    breaker, where, words = BREAKS[case]
    breaker(tree)
    with pytest.raises(DatasetError) as e:
        load_image_folder(tree)
    assert f"{tree / where if where else tree}: " in str(e.value) and words in str(e.value)


def test_mixed_images_name_the_image_they_differ_from(tree: Path) -> None:
    rgb(tree / "train/cherry/001.png", (9, 9))
    with pytest.raises(DatasetError, match="9x9 RGB, but .*apple/000.png is 12x12 RGB; allowed"):
        load_image_folder(tree)


def test_a_missing_or_file_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=f"{tmp_path / 'nope'}: no such directory"):
        load_image_folder(tmp_path / "nope")
    (tmp_path / "d.npz").write_bytes(b"")
    with pytest.raises(DatasetError, match="d.npz: a file; dataset 'images' needs a directory"):
        load_image_folder(tmp_path / "d.npz")
    with pytest.raises(DatasetNotFoundError, match="dataset 'images' needs \\[data\\] path"):
        load_dataset("images")


def test_npz_pointed_at_a_directory_names_images(tree: Path) -> None:
    with pytest.raises(DatasetError, match=f"{tree}: a directory; dataset 'npz' needs a .npz"):
        load_dataset("npz", str(tree))
