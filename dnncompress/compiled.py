"""Optional numba-compiled kernels (the `fast` extra), shared by bitpack, fastcode and k-means.

A kernel module is imported on first use, never at import time (numba costs about a second and
70–250 MB once per process), and is absent without numba or with DNNCOMPRESS_NO_NUMBA=1; the
numpy/torch paths then run, and the tests compare the two bit for bit.

Loading numba and its cached kernels costs about half a second the first time in a process (a first unpack
of a packed LeNet-5 here: 513 ms with numba, 16 ms without). Work done once, such as packing, unpacking or a
report, therefore runs in numpy/torch until ONE_OFF_BUDGET values of it have run in the process, unless the
kernels are loaded already (a QAT step loads them at once: it repeats). Either way, the work costs at most
about twice what the better choice would have (the ski-rental rule); the results are the same bit for bit.
"""
from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType

ONE_OFF_BUDGET = 1 << 26  # values: about what loading numba costs, in torch/numpy work (≈ 0.1–0.3 s here)


class _Budget:
    """One-off work run without the kernels so far in this process, and whether they are loaded."""

    spent = 0
    loaded = False


@functools.cache
def _import(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def kernels(module: str, one_off: int | None = None) -> ModuleType | None:
    """The compiled kernel module `module` (dotted name), or None where it cannot, must not or need not be used.
    `one_off`: the size of a job done once rather than every training step; None until the process has done
    ONE_OFF_BUDGET values of such work without the kernels, or has loaded them for something else."""
    if os.environ.get("DNNCOMPRESS_NO_NUMBA") == "1":
        return None
    if one_off is not None and not _Budget.loaded:
        _Budget.spent += one_off
        if _Budget.spent < ONE_OFF_BUDGET:
            return None
    found = _import(module)
    if found is not None:
        _Budget.loaded = True
    return found
