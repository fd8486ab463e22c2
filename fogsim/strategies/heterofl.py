"""``heterofl``: static nested width slices (Diao et al., HeteroFL, ICLR 2021).

A node holds the first ``ceil(f * width)`` neurons of every group, ``f`` the largest
fraction its budget trains at the minimum batch; slices are nested, so small devices
share the leading neurons with big ones. Clients train their slice as it is.

**As the reference code trains** (``diaoenmao/HeteroFL…``, ``src/train_classifier_fed.py``,
``fed.py``; its ``control`` defaults ``scale = 1``, ``mask = 1``), with the
sub-model care of ``SubModelStrategy``:

- ``clip_grad = 1.0``: the reference clips every step's gradient norm to 1;
- ``label_mask = True``: the reference's masked cross-entropy on non-IID data (logits
  of labels absent from a client's data zeroed in training) and its ``combine``,
  which averages an output row only over the clients holding that label;
- ``scaler = False``: the reference's ``Scaler`` (hidden outputs x ``1/rate`` in
  training) sits before *static batch norm*, which normalises the scale away again.
  FogNet has no normalisation layers, and without them the Scaler blows up narrow
  slices: measured (fleet5, 20 rounds, seed 1, in-process driver) MNIST IID camera /
  sensor slices fell from 0.951 / 0.937 to 0.202 / 0.114, MNIST Dirichlet(0.3)
  went to NaN; so it is off here and stays available (``scaler = true``).

Why the care matters: on Fashion-MNIST Dirichlet(0.3) with the CNN (4 rounds, seed
0) plain slices stalled at 0.21 global accuracy (loss 2.1) while mask-union reached
0.61; clipping alone gave 0.64, label masking alone 0.68. On the MNIST MLP the care
costs HeteroFL up to ~1 point; the README's research tables report both
configurations (``heterofl`` and ``heterofl-plain``).
"""

from fogsim.device.pruning import Kept
from fogsim.strategies.registry import register
from fogsim.strategies.submodel import ReferenceCare


@register("heterofl")
class HeteroFL(ReferenceCare):
    def kept_at(self, fraction: float, server_round: int) -> Kept:
        return self.nested(fraction)
