"""The assignment grader (tutorials/assignments/grade.py) on the reference, the skeleton and
deliberately wrong implementations."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slimgpt import oracle

ROOT = Path(__file__).resolve().parents[1]
GRADER = ROOT / "tutorials" / "assignments" / "grade.py"
SKELETON = ROOT / "tutorials" / "assignments" / "student.py"





# One BLAS thread: the cases are small matrices, and threaded OpenBLAS on a busy 2-core machine
# spends more time spinning than computing.
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1")


def _grade(student, golden, *extra):
    proc = subprocess.run([sys.executable, str(GRADER), str(student), "--cases", str(golden), *extra],
                          capture_output=True, text=True, timeout=300, env=ENV)
    return proc.returncode, proc.stdout + proc.stderr


def test_reference_scores_100(golden):
    rc, out = _grade("slimgpt.reference", golden)
    assert rc == 0, out
    assert "score: 100.0 / 100" in out


def test_skeleton_scores_0_and_says_not_implemented(golden):
    rc, out = _grade(SKELETON, golden)
    assert rc == 1, out
    assert "score: 0.0 / 100" in out
    assert "not implemented yet" in out and "Traceback" not in out


def test_skeleton_has_every_reference_operation_with_a_paper_citation():
    import importlib.util
    spec = importlib.util.spec_from_file_location("student_skeleton", SKELETON)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for op in oracle.SIGNATURES:
        fn = getattr(mod, op)
        assert fn.__doc__ and ("Eq." in fn.__doc__ or "spec §" in fn.__doc__.lower()), op
        with pytest.raises(NotImplementedError):
            oracle.call(fn, op, {name: None for name in oracle.SIGNATURES[op]})
    assert issubclass(mod.NotPositiveDefiniteError, Exception)


def _write(tmp_path, name, body):
    path = tmp_path / name
    path.write_text("from slimgpt.reference import *\nfrom slimgpt import reference as _r\n"
                    + textwrap.dedent(body))
    return path


def test_summed_single_column_errors_fail_task_3_with_a_hint(golden, tmp_path):
    wrong = _write(tmp_path, "summed.py", """
        def head_errors(W, Hinv, head_dim, *, gcd=True):
            import numpy as np
            single = np.sum(np.asarray(W) ** 2, axis=0) / np.diag(Hinv)   # Eq. (4) per column
            return single.reshape(-1, head_dim).sum(axis=1)

        def prune_heads(W, H, n_prune, head_dim, *, gcd=True, **kw):
            return _r.prune_heads(W, H, n_prune, head_dim, gcd=False, **kw)
    """)
    rc, out = _grade(wrong, golden)
    assert rc == 1
    assert "XX Task 3" in out and "XX Task 4" in out and "ok Task 2" in out
    assert "FAIL head_errors.correlated_head" in out and "grouped" in out
    assert "pruned_heads: expected indices [5, 6], got [3, 6]" in out


def test_no_compensation_fails_task_2(golden, tmp_path):
    wrong = _write(tmp_path, "nocomp.py", """
        def prune_columns(W, H, columns, *, percdamp=0.0, compensate=True):
            return _r.prune_columns(W, H, columns, percdamp=percdamp, compensate=False)
    """)
    rc, out = _grade(wrong, golden, "--task", "2")
    assert rc == 1
    assert "XX Task 2" in out and "FAIL prune_columns.single" in out
    assert "W_new:" in out and "max abs err" in out and "hint: OBS" in out
    assert "Task 3" not in out


def test_grader_exports_its_own_cases(tmp_path):
    """Without --cases the grader exports to a temporary directory."""
    proc = subprocess.run([sys.executable, str(GRADER), "slimgpt.reference", "--task", "6"],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok Task 6" in proc.stdout
