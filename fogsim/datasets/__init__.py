"""Data sets read from files: the in-memory form every loader returns (``base``) and the
forms of a data set of your own (``npz``, ``folders``: a directory of images by class).

The built-in MNIST / Fashion-MNIST IDX loader, the choice between them all
(``load_dataset``) and the split over fleet nodes are in ``fogsim.data``, above this
package: nothing here imports it.
"""
