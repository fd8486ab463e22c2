"""fogsim: federated fog-learning simulator (DynHP on memory-budgeted fleets, Flower + Ray).

Importing fogsim pins torch's CPU kernels to AVX2 on x86 hosts (``ATEN_CPU_CAPABILITY``,
``ONEDNN_MAX_CPU_ISA``; unless already set). Why: the same run gave other figures on an
AVX-512 host than on an AVX2 one. oneDNN pads a convolution's channels to 16 there, not
8, so the memory model (which follows it, ``fogsim.device.replay.conv_block``) let the
fleet5 CNN's 1 MiB cameras train no width at all, and kernels of another width sum
floats in another order (up to 6 pt apart per seed on the Fashion-MNIST Dirichlet CNN).
Pinned, an AVX-512 host reproduces an AVX2 host's runs exactly (checked: fleet5 MNIST
IID, mask-union seed 1 and heterofl seed 2, every class), and the memory model is the
one measured against the heap on AVX2. Both variables are read when torch first runs a
kernel, so they apply to every process that imports fogsim before training anything
(Ray workers inherit them from the driver). To use the host's widest kernels instead,
set ``ATEN_CPU_CAPABILITY=avx512`` and ``ONEDNN_MAX_CPU_ISA=ALL`` yourself.
"""

import os
import platform

if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

__version__ = "0.1.0"
