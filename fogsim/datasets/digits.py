"""scikit-learn's handwritten digits (``dataset = "digits"``): 1,797 grey 8x8 images of
the digits 0-9 (the UCI "Optical Recognition of Handwritten Digits" test set), shipped
inside the scikit-learn package, so it loads with no download anywhere.

It is fogsim's third built-in data set, beside MNIST and Fashion-MNIST: far smaller
(a fleet of 100 nodes holds ~15 images a node) and coarser (8x8, 17 grey levels), so a
strategy comparison on it is not one more 28x28 set. The pixels, 0..16 in the package,
are scaled to 0..255 ``uint8`` as the other sets are stored; there is no published
split, so a seeded sixth is held out for testing (:func:`~fogsim.datasets.base.hold_out`:
1,498 training and 299 test images) and each channel is normalised by the training
images' own mean and std.
"""

from __future__ import annotations

import numpy as np

from fogsim.datasets.base import ImageData, channel_stats, hold_out

SHAPE = (1, 8, 8)
NUM_CLASSES = 10


def load_digits() -> ImageData:
    """The digits as :class:`ImageData` (module doc)."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = np.round(bunch.images * (255 / 16)).astype(np.uint8)
    y = bunch.target.astype(np.int64)
    train, test = hold_out(len(y))
    mean, std = channel_stats(x[train])
    return ImageData("digits", x[train], y[train], x[test], y[test], mean, std)
