"""Load the compiled core `slimgpt._core` (C++, and CUDA when built).

The core links against scipy-openblas32's `libscipy_openblas.so`; its RPATH points at the
sibling site-packages folder, and this module preloads the library as well so that editable
installs and unusual layouts work too. `core()` returns None when the extension is missing,
so the NumPy reference always works.

Threads: the core runs OpenBLAS on ONE thread (set when `_core` loads) and splits its work into
tiles over its own threads, which block between calls instead of spinning (OpenBLAS's idle
workers spin after each call and starved torch's threads in the pipeline: a 20% SmolLM2 prune
went from 6 min 22 s to 55 s when OpenBLAS was pinned to one thread). The core uses as many
threads as the process may run on; `SLIMGPT_NUM_THREADS` or `core().set_num_threads(n)` change
that. Results do not depend on the number of threads (docs/cpp.md).
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
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
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
