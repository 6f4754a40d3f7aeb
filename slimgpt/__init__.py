"""slimgpt: SlimGPT structured pruning (Ling et al., NeurIPS 2024, arXiv 2412.18110).

- `slimgpt.reference`: the NumPy float64 specification (source in the repository's reference/).
- `slimgpt.ops`: the same operations with a `backend=` switch (reference, cpu, cuda).
- the torch pipeline, model, loaders, evaluation and CLI (`slimgpt --help`).
"""
__version__ = "0.1.0"

from slimgpt._native import has_cuda  # noqa: E402,F401
