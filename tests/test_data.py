import gzip
from pathlib import Path

import numpy as np
import pytest

from fogsim.data import DatasetNotFoundError, load_dataset, partition, read_idx, split_local


def test_mnist_is_full_and_offline() -> None:
    ds = load_dataset("mnist")
    assert ds.train_x.shape == (60000, 28, 28) and ds.test_x.shape == (10000, 28, 28)
    assert set(np.unique(ds.train_y)) == set(range(10))
    x, y = ds.tensors(ds.test_x[:5], ds.test_y[:5])
    assert tuple(x.shape) == (5, 1, 28, 28) and abs(float(x.mean())) < 1.0


def test_fashion_mnist() -> None:
    try:
        ds = load_dataset("fashion-mnist")
    except DatasetNotFoundError as e:
        pytest.skip(str(e))
    assert ds.train_x.shape == (60000, 28, 28) and len(ds.test_y) == 10000


def test_missing_dataset_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", str(tmp_path))


def test_read_idx_user_directory(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in images.shape)
    (tmp_path / "x.gz").write_bytes(gzip.compress(header + images.tobytes()))
    assert (read_idx(tmp_path / "x.gz") == images).all()


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_partition_covers_every_sample_once(scheme: str) -> None:
    labels = np.random.default_rng(0).integers(0, 10, 5000)
    parts = partition(labels, 50, scheme, seed=3, alpha=0.3)
    allidx = np.concatenate(parts)
    assert len(parts) == 50 and min(len(p) for p in parts) >= 1
    assert len(allidx) == 5000 and len(np.unique(allidx)) == 5000
    again = partition(labels, 50, scheme, seed=3, alpha=0.3)
    assert all((a == b).all() for a, b in zip(parts, again, strict=True))


def test_partition_skew() -> None:
    labels = np.random.default_rng(0).integers(0, 10, 20000)
    iid = partition(labels, 20, "iid", seed=0)
    assert max(len(p) for p in iid) - min(len(p) for p in iid) <= 1
    skewed = partition(labels, 20, "dirichlet", seed=0, alpha=0.1)
    classes_iid = np.mean([len(np.unique(labels[p])) for p in iid])
    classes_dir = np.mean([len(np.unique(labels[p])) for p in skewed])
    assert classes_iid == 10 and classes_dir < 7
    shards = partition(labels, 20, "shards", seed=0, shards_per_node=2)
    assert max(len(np.unique(labels[p])) for p in shards) <= 4


def test_split_local() -> None:
    train, test = split_local(np.arange(100), 0.1, seed=1)
    assert len(test) == 10 and len(train) == 90 and not set(train) & set(test)
    # a node of a few samples keeps one to train on whatever the fraction (it held out
    # all of them at 0.75 with 2, at 0.95 with up to 10, and crashed every round)
    for n, fraction in ((2, 0.75), (4, 0.9), (10, 0.95), (3, 0.99)):
        train, test = split_local(np.arange(n), fraction, seed=1)
        assert len(train) >= 1 and len(test) >= 1 and len(train) + len(test) == n


def test_draws_are_per_node_seeded_and_independent_of_the_fleet_size() -> None:
    from fogsim.data import draw

    a = draw(60_000, 100, [3, 5])
    assert len(a) == len(set(a.tolist())) == 100 and a.max() < 60_000
    assert np.array_equal(a, draw(60_000, 100, [3, 5]))  # seeded by (seed, node) alone
    assert not np.array_equal(a, draw(60_000, 100, [3, 6]))
    assert not np.array_equal(a, draw(60_000, 100, [4, 5]))
    with pytest.raises(ValueError, match="samples_per_node = 70000 but only 60000"):
        draw(60_000, 70_000, [0, 0])


def test_validation_samples_are_what_the_nodes_hold_out_and_nothing_trains_on() -> None:
    """``draws`` overlap between nodes: a sample one node holds out and another trains
    on is not a validation sample; ``limit`` draws a seeded subset."""
    from fogsim.data import draw
    from fogsim.scenario import DataSection

    labels = np.zeros(1_000, dtype=np.int64)
    data = DataSection(partitioning="draws", samples_per_node=200, client_test_fraction=0.1)
    pool = data.validation(labels, 8, 3, None, limit=10_000)
    splits = [data.local_split(draw(1_000, 200, [3, n]), 3, n) for n in range(8)]
    trained = set(np.concatenate([t for t, _ in splits]).tolist())
    held = set(np.concatenate([h for _, h in splits]).tolist())
    assert held & trained, "the case must have overlap to mean anything"
    assert set(pool.tolist()) == held - trained and np.all(np.diff(pool) > 0)
    some = data.validation(labels, 8, 3, None, limit=5)
    assert len(some) == 5 and set(some.tolist()) <= set(pool.tolist())
    assert np.array_equal(some, data.validation(labels, 8, 3, None, limit=5))
    for nodes in (20, 40, 60):  # up to every sample trained on: the count stops early
        splits = [data.local_split(draw(1_000, 200, [3, n]), 3, n) for n in range(nodes)]
        trained = set(np.concatenate([t for t, _ in splits]).tolist())
        held = set(np.concatenate([h for _, h in splits]).tolist())
        got = data.validation(labels, nodes, 3, None, limit=10_000)
        assert set(got.tolist()) == held - trained, nodes
    assert len(trained) == 1_000 and not got.size  # the last case covers every sample
    none = DataSection(partitioning="draws", samples_per_node=200, client_test_fraction=0)
    assert len(none.validation(labels, 8, 3, None, limit=10_000)) == 0
