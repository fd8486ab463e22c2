"""``heterofl``: static nested width slices (Diao et al., HeteroFL, ICLR 2021).

A node holds the first ``ceil(f * width)`` neurons of every group, ``f`` the largest
fraction its budget trains at the minimum batch; slices are nested, so small devices
share the leading neurons with big ones. Clients train their slice as it is.
"""

from fogsim.device.pruning import Kept
from fogsim.strategies.registry import register
from fogsim.strategies.submodel import SubModelStrategy


@register("heterofl")
class HeteroFL(SubModelStrategy):
    def kept_at(self, fraction: float, server_round: int) -> Kept:
        return self.nested(fraction)
