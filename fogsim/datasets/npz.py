"""Your own data set as one NumPy ``.npz`` file, any image size and number of classes."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from fogsim.datasets.base import (
    DatasetError,
    DatasetNotFoundError,
    ImageData,
    channel_stats,
    check_labels,
    hold_out,
)

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: Path) -> ImageData:
    """Your own data set: a ``.npz`` with ``x_train, y_train, x_test, y_test`` (as
    ``np.savez`` writes them), or ``x, y`` (a seeded sixth becomes the test split,
    :func:`~fogsim.datasets.base.hold_out`). Images are ``(N, H, W)`` (grey),
    ``(N, H, W, C)`` or ``(N, C, H, W)`` with 1 or 3 channels, any size; ``uint8``
    (0..255) or float in [0, 1] (checked); labels are integers ``0..K-1``, any ``K``. Each
    channel is normalised by the training images' mean and std. Errors name the file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zlib.error) as e:
        if not path.exists():
            raise DatasetNotFoundError(f"{path}: no such .npz file") from None
        if path.is_file() and _magic(path) != b"PK":  # numpy would blame pickles
            raise DatasetError(
                f"{path}: not an .npz file (a zip archive, as numpy.savez writes one)"
            ) from None
        raise DatasetError(f"{path}: not a readable .npz file ({e})") from None
    if set(NPZ_KEYS) <= set(arrays):
        parts = [arrays[k] for k in NPZ_KEYS]
    elif {"x", "y"} <= set(arrays):
        x, y = arrays["x"], arrays["y"]
        check_labels(path, y, x, "x/y")  # one label per image, before they are split
        train, test = hold_out(len(y))
        parts = [x[train], y[train], x[test], y[test]]
    else:
        raise DatasetError(
            f"{path}: holds {sorted(arrays)}; expected {', '.join(NPZ_KEYS)} or x, y"
        )
    return from_arrays("npz", path, *parts)


def _magic(path: Path) -> bytes:
    """A file's first two bytes (``PK`` for a zip archive, as an ``.npz`` is)."""
    with path.open("rb") as f:
        return f.read(2)


def from_arrays(
    name: str,
    path: Path,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
) -> ImageData:
    """An :class:`ImageData` of arrays read from ``path`` in any of the forms
    :func:`load_npz` takes, checked (errors name ``path``), channels first, each
    channel normalised by the training images' mean and std."""
    images = [
        _channels_first(path, x, split) for x, split in ((train_x, "train"), (test_x, "test"))
    ]
    labels = [
        check_labels(path, y, x, split)
        for y, x, split in ((train_y, images[0], "train"), (test_y, images[1], "test"))
    ]
    if images[0].shape[1:] != images[1].shape[1:]:
        raise DatasetError(
            f"{path}: train images {images[0].shape[1:]}, test {images[1].shape[1:]}"
        )
    mean, std = channel_stats(images[0])
    return ImageData(name, images[0], labels[0], images[1], labels[1], mean, std)


def _channels_first(path: Path, x: np.ndarray, split: str) -> np.ndarray:
    """``x`` as (N, H, W) or (N, C, H, W), uint8 or float32."""
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if not (x.ndim == 3 or x.ndim == 4 and x.shape[1] in (1, 3)) or min(x.shape[-2:]) < 1:
        raise DatasetError(
            f"{path}: {split} images of shape {x.shape}; expected (N, H, W), (N, H, W, C) "
            "or (N, C, H, W) with C = 1 or 3"
        )
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise DatasetError(f"{path}: {split} images are {x.dtype}; expected uint8 or float")
    if len(x) == 0:
        raise DatasetError(f"{path}: no {split} images")
    if x.dtype == np.uint8:
        return x
    low, high = float(np.min(x)), float(np.max(x))  # NaN propagates: refused below
    if not (0.0 <= low and high <= 1.0):
        raise DatasetError(
            f"{path}: {split} images are float in [{low:g}, {high:g}]; expected [0, 1] "
            "(divide 0..255 images by 255, or store them as uint8)"
        )
    return x.astype(np.float32)
