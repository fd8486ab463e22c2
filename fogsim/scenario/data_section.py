"""``[data]``: which data set, from where, and how it is split over the fleet's nodes
(``fogsim.data``; a Flower Datasets partitioner: ``fogsim.datasets.partitioners``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from fogsim.data import (
    BUILT_IN_SHAPES,
    DATASETS,
    OWN,
    PARTITIONINGS,
    draw,
    partition,
    split_local,
)
from fogsim.datasets.partitioners import problems as partitioner_problems
from fogsim.device.models import IMAGE_SHAPE, NUM_CLASSES
from fogsim.scenario.base import Section


class DataSection(Section):
    dataset: Literal[DATASETS] = "mnist"  # type: ignore[valid-type]
    path: str | None = None
    partitioning: Literal[PARTITIONINGS] = "iid"  # type: ignore[valid-type]
    alpha: float = Field(0.5, gt=0)
    shards_per_node: int = Field(2, ge=1)
    samples_per_node: int = Field(
        100, ge=1, description="draws: each node's own draw from the training set"
    )
    partitioner: str | None = Field(
        None,
        description="flower: a flwr_datasets.partitioner class (e.g. 'DirichletPartitioner') "
        "or 'module:Class'",
    )
    partitioner_params: dict[str, Any] = Field(
        {}, description="flower: the partitioner's arguments (num_partitions is fleet.nodes)"
    )
    client_test_fraction: float = Field(0.1, ge=0, lt=1)
    image_shape: list[Annotated[int, Field(ge=1)]] = Field(
        list(IMAGE_SHAPE),
        min_length=3,
        max_length=3,
        description="channels, height, width of one image (a built-in set's own by default; "
        "npz, images, hf: checked against it)",
    )
    num_classes: int = Field(
        NUM_CLASSES, ge=2, description="labels 0..num_classes-1 (a built-in set's own by default)"
    )

    @model_validator(mode="before")
    @classmethod
    def _built_in_shape(cls, values: Any) -> Any:
        """A built-in data set's image shape and classes are its own unless given."""
        # a name only: a list or table there is the field's own error to report
        if isinstance(values, dict) and str(values.get("dataset")) in BUILT_IN_SHAPES:
            shape, classes = BUILT_IN_SHAPES[values["dataset"]]
            values = {"image_shape": list(shape), "num_classes": classes} | values
        return values

    @model_validator(mode="after")
    def _shape_of_known_sets(self) -> DataSection:
        if self.dataset in OWN:
            if not self.path:
                raise ValueError(f"path: dataset {self.dataset!r} needs path = {OWN[self.dataset]}")
        elif (tuple(self.image_shape), self.num_classes) != BUILT_IN_SHAPES[self.dataset]:
            shape, classes = BUILT_IN_SHAPES[self.dataset]
            raise ValueError(
                f"image_shape = {self.image_shape}, num_classes = {self.num_classes}: "
                f"{self.dataset} has {list(shape)} images in {classes} classes "
                "(set them only for dataset = 'npz', 'images' or 'hf')"
            )
        elif self.dataset == "digits" and self.path:
            raise ValueError(
                f"path = {self.path!r}: dataset 'digits' ships inside scikit-learn; leave path out"
            )
        if (self.partitioning == "flower") != (self.partitioner is not None):
            raise ValueError(
                f"partitioner = {self.partitioner!r} with partitioning = "
                f"{self.partitioning!r}: a partitioner goes with partitioning = 'flower', "
                "and partitioning 'flower' needs one (e.g. 'DirichletPartitioner')"
            )
        if self.partitioner_params and self.partitioning != "flower":
            raise ValueError("partitioner_params: only for partitioning = 'flower'")
        if self.partitioner is not None:
            problems = partitioner_problems(self.partitioner, self.partitioner_params)
            if problems:
                raise ValueError(problems[0])
        return self

    def split(
        self, labels: np.ndarray, num_nodes: int, seed: int, weights: list[float] | None
    ) -> list[np.ndarray]:
        """Every node's sample indices of a data set with ``labels``, as this section
        says (``fogsim.data.partition``; not ``draws``, which are made per node)."""
        return partition(
            labels,
            num_nodes,
            self.partitioning,
            seed=seed,
            alpha=self.alpha,
            shards_per_node=self.shards_per_node,
            partitioner=self.partitioner,
            partitioner_params=self.partitioner_params,
            weights=weights,
        )

    def local_split(
        self, indices: np.ndarray, seed: int, node: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Node ``node``'s (train, held-out) part of its ``indices``: ``client_test_fraction``
        of them held out, seeded by (run seed, node). The one split both its client and
        the fleet's validation samples (:meth:`validation`) use."""
        return split_local(indices, self.client_test_fraction, [seed, node])

    def validation(
        self,
        labels: np.ndarray,
        num_nodes: int,
        seed: int,
        weights: list[float] | None,
        limit: int,
    ) -> np.ndarray:
        """The fleet's validation samples (indices into the training set, sorted): what
        every node holds out of its training, pooled, less any sample some node trains
        on (``draws`` overlap between nodes), at most ``limit`` of them (a seeded choice).

        No training step ever sees them, so a learning rate or a strategy chosen by
        them is not chosen by the test split: the test figures stay an unbiased
        estimate (empty when ``client_test_fraction`` is 0).

        Node by node into two masks of the data set's size, stopping once every sample
        is trained on (nothing can be held out then): holding every node's split at
        once took ~190 MB at the end of a 100,000-node run of ``draws``, which was the
        run's memory peak, for an empty result."""
        n = len(labels)
        trained, held = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        covered = 0  # samples some node trains on
        draws = self.partitioning == "draws"
        parts = [] if draws else self.split(labels, num_nodes, seed, weights)
        for node in range(num_nodes):
            part = draw(n, self.samples_per_node, [seed, node]) if draws else parts[node]
            train, held_out = self.local_split(part, seed, node)
            covered += np.count_nonzero(~trained[train])
            trained[train], held[held_out] = True, True
            if covered == n:
                break
        held = np.flatnonzero(held & ~trained)
        if len(held) > limit:
            rng = np.random.default_rng([seed, 0x7A11D])
            held = np.sort(rng.choice(held, size=limit, replace=False))
        return held
