"""Load the compiled core `slimgpt._core` (C++, and CUDA when built).

The core links against scipy-openblas32's `libscipy_openblas.so`; its RPATH points at the
sibling site-packages folder, and this module preloads the library as well so that editable
installs and unusual layouts work too. `core()` returns None when the extension is missing,
so the NumPy reference always works.
"""
from __future__ import annotations

import ctypes
import functools
import os


@functools.lru_cache(maxsize=None)
def core():
    """The `slimgpt._core` module, or None when it was not built."""
    try:
        import scipy_openblas32

        lib = os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas.so")
        if os.path.exists(lib):
            blas = ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            # One BLAS thread unless the user asks otherwise: idle OpenBLAS workers spin and
            # starve torch's threads between calls (a 20% SmolLM2 prune: 39 s -> 23 s).
            threads = os.environ.get("OPENBLAS_NUM_THREADS", "1")
            blas.scipy_openblas_set_num_threads(int(threads) if threads.isdigit() else 1)
    except ImportError:
        pass
    try:
        from slimgpt import _core
    except ImportError:
        return None
    return _core


def has_cpu() -> bool:
    return core() is not None


def has_cuda() -> bool:
    """True when the core was built with CUDA and a CUDA device is visible."""
    c = core()
    return c is not None and c.has_cuda()
