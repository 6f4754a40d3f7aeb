"""Structured-pruning methods for the layer-wise pipeline: SlimGPT and the baselines.

One file per method, each a `Method` (base.py: `select`, optional whole-model `plan`, optional
mean-shift `bias_compensation`, `needs_hessian`), and this explicit registry. The pipeline and
the CLI look methods up here and never ask which method they run.

    slimgpt.py     SlimGPT: grouped-Cholesky greedy heads, DGS channels, OBS compensation
    magnitude.py   structure weight norms (no calibration)
    wanda_sp.py    Σ |W| · ||X||₂ per structure
    flap.py        fluctuation scores, one global threshold, bias compensation

A method of your own: subclass `Method` and `register(MyMethod())`.
"""
from slimgpt.methods.base import Method, MethodOptions, Selection
from slimgpt.methods.flap import FLAP
from slimgpt.methods.magnitude import Magnitude
from slimgpt.methods.slimgpt import SlimGPT
from slimgpt.methods.wanda_sp import WandaSP

METHODS: dict[str, Method] = {m.name: m for m in (SlimGPT(), Magnitude(), WandaSP(), FLAP())}


def register(method: Method) -> None:
    """Make `method` available to the pipeline and the CLI under `method.name`."""
    if not isinstance(method, Method) or not method.name:
        raise ValueError("register a Method instance with a name")
    METHODS[method.name] = method


__all__ = ["METHODS", "Method", "MethodOptions", "Selection", "register", "SlimGPT", "Magnitude", "WandaSP", "FLAP"]
