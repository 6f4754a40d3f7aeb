"""Every numerical tolerance of the test suite, in one place, each with its reason.

Use `assert_close(actual, desired, kind, err_msg=case_id)`: the reference goes in `desired`
(numpy's assert_allclose is asymmetric), and `kind` picks a row below. The absolute part scales
with max|desired| so one row serves matrices of any magnitude.
"""
from __future__ import annotations

import numpy as np

# kind: (rtol, atol relative to max|desired|)
TOLERANCES = {
    # Two float64 formulas of the same quantity (Cholesky form vs naive inverse, grouped
    # Cholesky vs sequential downdates): only rounding differs, on well-conditioned H.
    "float64": (1e-9, 1e-10),
    # float64 least-squares/normal-equation identities on H = 2 X^T X / n with n >= 4 d_in:
    # one extra solve, condition numbers up to ~1e4 on the test matrices.
    "float64_solve": (1e-7, 1e-8),
    # C++/CUDA float32 fast path against the float64 reference on the same inputs:
    # ~1e-7 unit roundoff times condition numbers ~1e2..1e3 of the synthetic H.
    "float32": (1e-4, 2e-4),
    # torch float32 model forwards compared after algebraically equal rewrites
    # (masked vs shrunk weights, save/load): summation order changes only.
    "logits": (1e-4, 1e-4),
    # Whole tiny models pruned with the float32 C++ core vs the float64 reference: same pruned
    # indices (checked exactly), but OBS-compensated weights differ at ~1e-6 relative per layer
    # and the differences propagate through 3-4 layers of calibration activations.
    "backend_logits": (2e-3, 2e-3),
}


def assert_close(actual, desired, kind: str, err_msg: str = "") -> None:
    rtol, atol_rel = TOLERANCES[kind]
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    scale = float(np.max(np.abs(desired))) if desired.size else 0.0
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol_rel * max(scale, 1e-300),
                               err_msg=f"[{kind}] {err_msg}")
