"""What every data set loader returns (:class:`ImageData`), its two errors, and the
checks and statistics the loaders of your own files share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class DatasetNotFoundError(FileNotFoundError):
    """The files of a data set are nowhere fogsim looks."""


class DatasetError(ValueError):
    """The files were found but do not hold a usable data set."""


@dataclass(frozen=True)
class ImageData:
    """A data set in memory, as every loader returns it: images stay as read (``uint8``
    is 4x smaller than float) and are scaled and normalised per batch by
    :meth:`tensors`; a node's partition indexes into them, never copies."""

    name: str
    train_x: np.ndarray  # (N, H, W) grey or (N, C, H, W); uint8 (0..255) or float32
    train_y: np.ndarray  # int64 (N,)
    test_x: np.ndarray
    test_y: np.ndarray
    mean: tuple[float, ...] = (0.0,)  # per channel, of the images scaled to [0, 1]
    std: tuple[float, ...] = (1.0,)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        shape = self.train_x.shape[1:]
        return (1, *shape) if len(shape) == 2 else tuple(shape)  # type: ignore[return-value]

    def tensors(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float images (B, C, H, W) and int64 labels."""
        images = torch.from_numpy(x).float()
        if x.dtype == np.uint8:
            images.div_(255.0)
        if images.ndim == 3:
            images = images.unsqueeze(1)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return images.sub_(mean).div_(std), torch.from_numpy(y)


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of training images ``x`` ((N, H, W) or (N, C, H, W)),
    scaled to [0, 1] as :meth:`ImageData.tensors` scales them: a data set of your own has
    no published statistics, so it is normalised by its own training split."""
    scaled = x.astype(np.float64) / (255.0 if x.dtype == np.uint8 else 1.0)
    axes = (0, 2, 3) if scaled.ndim == 4 else (0, 1, 2)
    mean, std = scaled.mean(axis=axes), np.maximum(scaled.std(axis=axes), 1e-6)
    return tuple(np.atleast_1d(mean).tolist()), tuple(np.atleast_1d(std).tolist())


def check_labels(path: Path, y: np.ndarray, x: np.ndarray, split: str) -> np.ndarray:
    """``y`` as int64 if it is one integer label 0..K-1 per image of ``x``; else a
    :class:`DatasetError` naming ``path`` and ``split``."""
    if y.shape != x.shape[:1] or not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
        raise DatasetError(
            f"{path}: {split} labels of shape {y.shape} and type {y.dtype} for {len(x)} "
            "images; expected one integer label 0..K-1 per image"
        )
    return y.astype(np.int64)


def hold_out(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of a data set that comes without a test split: a seeded
    shuffle (seed 0, whatever the run's seed, so every run and every process sees the
    same split) whose first sixth is held out for testing (MNIST's 60,000 / 10,000)."""
    order = np.random.default_rng(0).permutation(n)
    test, train = np.split(order, [n // 6])
    return train, test
