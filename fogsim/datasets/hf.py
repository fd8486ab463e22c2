"""Your own data set as a saved Hugging Face dataset (``dataset = "hf"``): the directory
``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` writes, read with
``datasets.load_from_disk`` (no hub, no download: a Flower Datasets or Hugging Face
user saves what they loaded once, and fogsim reads it offline).

- A ``DatasetDict`` needs a ``train`` split; its ``test`` split, if any, is the test
  set (other splits are not read). A single ``Dataset``, or no ``test`` split: a seeded
  sixth is held out (:func:`~fogsim.datasets.base.hold_out`), as for a ``.npz``.
- Columns: the image column is the one ``Image`` feature (or, failing that, the one
  named ``image``, ``img`` or ``pixel_values``); the label column the one ``ClassLabel``
  feature (or the one named ``label`` or ``labels``). Two candidates, or none, is an
  error listing the columns.
- Images decode to arrays of one size and 1 or 3 channels (``L`` or ``RGB``), as for
  every form; then the checks and normalisation of a ``.npz``
  (:func:`~fogsim.datasets.npz.from_arrays`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fogsim.datasets.base import DatasetError, DatasetNotFoundError, ImageData, hold_out
from fogsim.datasets.npz import from_arrays

MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")  # save_to_disk's
IMAGE_NAMES = ("image", "img", "pixel_values")
LABEL_NAMES = ("label", "labels")


def is_saved_hf(path: Path) -> bool:
    """Whether ``path`` is a directory ``save_to_disk`` wrote."""
    return path.is_dir() and any((path / m).is_file() for m in MARKERS)


def load_saved_hf(path: Path) -> ImageData:
    """A saved Hugging Face dataset as :class:`ImageData` (module doc)."""
    from datasets import Dataset, DatasetDict, load_from_disk

    if not path.exists():
        raise DatasetNotFoundError(f"{path}: no such directory (a saved Hugging Face dataset)")
    if not is_saved_hf(path):
        raise DatasetError(
            f"{path}: not a saved Hugging Face dataset (none of {', '.join(MARKERS)}); "
            "write one with Dataset.save_to_disk or DatasetDict.save_to_disk"
        )
    try:
        saved = load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as e:
        raise DatasetError(f"{path}: cannot be read by datasets.load_from_disk ({e})") from None
    if isinstance(saved, DatasetDict):
        if "train" not in saved:
            raise DatasetError(f"{path}: splits {sorted(saved)}; a 'train' split is needed")
        train, test = saved["train"], saved.get("test")
    else:
        assert isinstance(saved, Dataset)
        train, test = saved, None
    image_col, label_col = (
        _column(path, train, "Image", IMAGE_NAMES),
        _column(path, train, "ClassLabel", LABEL_NAMES),
    )
    train_x, train_y = _arrays(path, train, image_col, label_col, "train")
    if test is None:
        keep, held = hold_out(len(train_y))
        parts = [train_x[keep], train_y[keep], train_x[held], train_y[held]]
    else:
        parts = [train_x, train_y, *_arrays(path, test, image_col, label_col, "test")]
    return from_arrays("hf", path, *parts)


def _column(path: Path, split: object, feature: str, names: tuple[str, ...]) -> str:
    """The one column of type ``feature``, else the one named in ``names``."""
    features = split.features  # type: ignore[attr-defined]
    typed = [c for c, f in features.items() if type(f).__name__ == feature]
    found = typed or [c for c in features if c in names]
    if len(found) != 1:
        what = "image" if feature == "Image" else "label"
        raise DatasetError(
            f"{path}: columns {dict((c, type(f).__name__) for c, f in features.items())}; "
            f"expected exactly one {what} column (a {feature} feature, or one named "
            f"{' or '.join(names)}), found {found or 'none'}"
        )
    return found[0]


def _arrays(
    path: Path, split: object, image_col: str, label_col: str, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of one split as NumPy arrays (one ``[:]`` read: column by
    column access is ~200x slower)."""
    try:
        rows = split.with_format("numpy")[:]  # type: ignore[attr-defined]
    except (ValueError, TypeError) as e:
        raise DatasetError(f"{path}: {name} images cannot be read as arrays ({e})") from None
    x, y = rows[image_col], rows[label_col]
    if x.dtype == object:  # images of different sizes do not stack
        shapes = sorted({np.shape(i) for i in x})[:3]
        raise DatasetError(
            f"{path}: {name} images of different shapes ({', '.join(map(str, shapes))}, ...); "
            "allowed: one size for all images of a data set (fogsim does not resize)"
        )
    return x, y
