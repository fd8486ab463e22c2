"""The message contract's own helpers (``fogsim.flower.wire``)."""

import numpy as np
import pytest
import torch
from flwr.app import Array

from fogsim.flower.wire import to_numpy

ARRAYS = {
    "float32 matrix": np.random.default_rng(0).random((3, 4)).astype(np.float32),
    "int64 vector": np.arange(5),
    "empty": np.zeros((0, 3)),
    "0-d bool": np.array(True),
    "Fortran order": np.asfortranarray(np.random.default_rng(1).random((3, 4))),
    "strided view": np.random.default_rng(2).random((2, 3, 4))[:, ::2],
    "transposed tensor": torch.randn(4, 5).t(),
}


@pytest.mark.parametrize("name", list(ARRAYS))
def test_to_numpy_reads_what_flower_wrote(name: str) -> None:
    """The header-skipping view equals Flower's own ``np.load`` for every layout."""
    array = Array(ARRAYS[name])
    ours, flowers = to_numpy(array), array.numpy()
    assert ours.dtype == flowers.dtype and ours.shape == flowers.shape
    assert np.array_equal(ours, flowers)
