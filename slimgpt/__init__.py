"""slimgpt: SlimGPT structured pruning (Ling et al., NeurIPS 2024, arXiv 2412.18110).

- `slimgpt.reference`: the NumPy float64 specification (source in the repository's reference/).
- `slimgpt.ops`: the same operations with a `backend=` switch (reference, cpu, cuda).
- the torch pipeline, model, loaders, evaluation and CLI (`slimgpt --help`).
"""
import os as _os
import pkgutil as _pkgutil

# Run from a source checkout (`python -m pytest`, `python -c ...` in the repository root), this
# folder shadows the installed package, which holds the compiled core `_core`: also search the
# other `slimgpt` folders on sys.path (the installed one) for submodules.
__path__ = _pkgutil.extend_path(__path__, __name__)

# NumPy's OpenBLAS (the reference backend) reads this when NumPy is first imported: one thread,
# because idle OpenBLAS workers spin and starve torch's threads in the pipeline. A user's own
# setting wins; slimgpt/_native.py does the same for the C++ core's OpenBLAS.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"

from slimgpt._native import has_cuda  # noqa: E402,F401
