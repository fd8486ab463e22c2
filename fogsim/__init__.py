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

It also pins glibc's mmap threshold at its largest, 32 MiB (``mallopt``, unless
``MALLOC_MMAP_THRESHOLD_`` is set). Why: glibc serves a block above the threshold with
mmap, whole pages and a header, up to a page beyond its bytes, and the threshold starts
at 128 KiB and only rises as such blocks are freed. So the same training step cost more
in a fresh process than later in it: alone in a fresh process, an MLP on 3x32x32 images
whose first weight is a whole number of pages (3,072 x 300, momentum or Adam) went
up to 1.4 KB over the memory model, which charges that page only from 32 MiB
(``fogsim.device.memory.mmap_slack``). Pinned, every process allocates as the model
counts, from its first step. The trim threshold goes to 64 MiB, where glibc's own rise
would take it; left at 128 KiB, the heap's top would be given back and faulted in again
every step.
"""

import ctypes
import os
import platform

if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest; fogsim.device.memory.mmap_slack charges it


def _pin_mmap_threshold() -> None:
    """Serve every block under 32 MiB from the heap, never with mmap (see module doc)."""
    if os.name != "posix":
        return
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # glibc's; absent elsewhere
    if mallopt is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD)  # what glibc's own rise sets it to


_pin_mmap_threshold()

__version__ = "0.1.0"
