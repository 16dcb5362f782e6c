"""Optional numba-compiled kernels (the `fast` extra), shared by bitpack, fastcode and k-means.

A kernel module is imported on first use, never at import time (numba costs about a second and
70–250 MB once per process), and is absent without numba or with DNNCOMPRESS_NO_NUMBA=1; the
numpy/torch paths then run, and the tests compare the two bit for bit."""
from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType


@functools.cache
def _import(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def kernels(module: str) -> ModuleType | None:
    """The compiled kernel module `module` (dotted name), or None where it cannot or must not be used."""
    return None if os.environ.get("DNNCOMPRESS_NO_NUMBA") == "1" else _import(module)
