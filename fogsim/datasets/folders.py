"""Your own data set as a directory of images by class.

The layout is the one torchvision's ``ImageFolder`` and Keras'
``image_dataset_from_directory`` read, one level up for the splits::

    root/train/<class name>/<image>     e.g. root/train/cat/0001.png
    root/test/<class name>/<image>      optional

Images are decoded with Pillow once per process (``fogsim.data.load_dataset`` caches
them in memory, as it does the other data sets); nothing is written anywhere, the
data directory included. Decoding takes time in every process that loads the data
set (the driver and each Ray worker; 10,000 random 32x32 RGB PNGs took 6 s on a
shared 2-core machine): for big data sets a ``.npz`` loads faster.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fogsim.datasets.base import (
    DatasetError,
    DatasetNotFoundError,
    ImageData,
    channel_stats,
    hold_out,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MODES = {"L": 1, "RGB": 3}  # Pillow's mode -> channels
ALLOWED_MODES = "L (grey, 1 channel) or RGB (3 channels)"
LAYOUT = "root/train/<class>/<image> and, optionally, root/test/<class>/<image>"


def load_image_folder(root: Path) -> ImageData:
    """A directory of images by class (the layout above), any image size and number of
    classes.

    - Labels: the class folders of ``train/``, sorted by name, are labels 0..K-1;
      ``test/``'s class folders must be among them (a class may have no test images).
    - No ``test/`` folder: a seeded sixth of the training images is held out for
      testing (:func:`~fogsim.datasets.base.hold_out`), as for a ``.npz`` of ``x, y``.
      Folders other than ``train/`` and ``test/`` (a ``val/``, say) are not read.
    - Images: files ending in one of ``IMAGE_SUFFIXES`` (any case) inside a class
      folder; other files and hidden ones (``.DS_Store``) are skipped. All images of
      the data set share one size and one Pillow mode, ``L`` (grey: ``(N, H, W)``, one
      channel) or ``RGB`` (``(N, 3, H, W)``): fogsim neither resizes nor converts,
      since a silent resize would change the data the results are about.
    - Pixels stay ``uint8`` (0..255) in memory; :meth:`ImageData.tensors` scales them
      to [0, 1] and normalises each channel by the training images' mean and std, as
      for a ``.npz``.

    Errors (:class:`DatasetError`, :class:`DatasetNotFoundError`) name the folder or
    file, what was found and what is allowed."""
    if not root.exists():
        raise DatasetNotFoundError(f"{root}: no such directory; expected {LAYOUT}")
    if not root.is_dir():
        raise DatasetError(
            f"{root}: a file; dataset 'images' needs a directory, {LAYOUT} "
            "(a .npz file is dataset 'npz')"
        )
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DatasetError(f"{root}: no train folder (found: {_listing(root)}); expected {LAYOUT}")
    classes = _class_dirs(train_dir)
    if not classes:
        raise DatasetError(
            f"{train_dir}: no class folders (found: {_listing(train_dir)}); expected {LAYOUT}"
        )
    first: list[tuple[Path, tuple[int, int], str]] = []  # the image all others must match
    train_x, train_y = _read_split(train_dir, classes, classes, first)
    test_dir = root / "test"
    if test_dir.is_dir():
        test_classes = _class_dirs(test_dir)
        if unknown := sorted(set(test_classes) - set(classes)):
            raise DatasetError(
                f"{test_dir}: class folders {unknown} are not in {train_dir}; allowed: "
                f"{classes} (labels are the training classes, sorted)"
            )
        if not test_classes:
            raise DatasetError(
                f"{test_dir}: no class folders (found: {_listing(test_dir)}); expected "
                f"{LAYOUT} (or no test folder: a seeded sixth of train is held out)"
            )
        test_x, test_y = _read_split(test_dir, test_classes, classes, first)
    else:
        train, test = hold_out(len(train_y))
        test_x, test_y = train_x[test], train_y[test]
        train_x, train_y = train_x[train], train_y[train]
    mean, std = channel_stats(train_x)
    return ImageData("images", train_x, train_y, test_x, test_y, mean, std)


def _class_dirs(split_dir: Path) -> list[str]:
    """The class folder names of one split, sorted (hidden folders skipped)."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _listing(directory: Path, most: int = 5) -> str:
    """A short, sorted listing of ``directory`` for an error message."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
    more = f", ... ({len(names)} in all)" if len(names) > most else ""
    return ", ".join(names[:most]) + more if names else "nothing"


def _read_split(
    split_dir: Path,
    classes: list[str],
    label_of: list[str],
    first: list[tuple[Path, tuple[int, int], str]],
) -> tuple[np.ndarray, np.ndarray]:
    """Images ((N, H, W) or (N, 3, H, W) uint8) and int64 labels of the ``classes``
    folders of ``split_dir``; labels are positions in ``label_of``. ``first`` holds
    the data set's first image (appended here if empty), the size and mode all others
    must share."""
    images, labels = [], []
    for name in classes:
        folder = split_dir / name
        files = sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not files:
            raise DatasetError(
                f"{folder}: no images (found: {_listing(folder)}); allowed: files ending "
                f"{', '.join(IMAGE_SUFFIXES)}"
            )
        for file in files:
            images.append(_read_image(file, first))
        labels += [label_of.index(name)] * len(files)
    x = np.stack(images)
    if x.ndim == 4:  # (N, H, W, 3) as Pillow gives it -> channels first
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x, np.asarray(labels, dtype=np.int64)


def _read_image(file: Path, first: list[tuple[Path, tuple[int, int], str]]) -> np.ndarray:
    """One image as (H, W) or (H, W, 3) uint8, checked against ``first``."""
    from PIL import Image  # only this data set needs Pillow

    try:
        with Image.open(file) as image:
            size, mode = image.size, image.mode
            pixels = np.asarray(image) if mode in MODES else None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{file}: not a readable image ({e})") from None
    if pixels is None:
        raise DatasetError(
            f"{file}: Pillow mode {mode}; allowed: {ALLOWED_MODES} (convert the images, "
            "e.g. Pillow's image.convert('RGB'))"
        )
    if not first:
        first.append((file, size, mode))
    elif (size, mode) != first[0][1:]:
        path, (w, h), m = first[0]
        raise DatasetError(
            f"{file}: {size[0]}x{size[1]} {mode}, but {path} is {w}x{h} {m}; allowed: one "
            f"size and one mode, {ALLOWED_MODES}, for all images of a data set (fogsim "
            "neither resizes nor converts them)"
        )
    return pixels
