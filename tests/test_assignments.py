"""The assignment grader (tutorials/assignments/grade.py): an honest implementation scores 100, the
skeleton 0, wrong implementations fail with useful messages, and a submission cannot game it by
re-exporting slimgpt, by reading the expected outputs, by hanging or by crashing the grader.

The honest implementation is the reference's own source (reference/*.py) pasted into one module,
built programmatically below: the grader cannot tell it from a student's work, and it must give
it exactly 100/100. Every "wrong" submission is that module with a few definitions appended."""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from slimgpt import oracle

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = ROOT / "tutorials" / "assignments"
GRADER = ASSIGNMENTS / "grade.py"
SKELETON = ASSIGNMENTS / "student.py"
NOT_ALLOWED = "imports slimgpt, which is not allowed in a submission"

# One BLAS thread: the cases are small matrices, and threaded OpenBLAS on a busy 2-core machine
# spends more time spinning than computing.
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1")


@pytest.fixture(scope="module", autouse=True)
def _course_cache(tmp_path_factory):
    """Unit 3's model is trained once for the whole module (units.trained_model), not per grade."""
    ENV["SLIMGPT_COURSE_CACHE"] = str(tmp_path_factory.mktemp("course-cache"))
    yield
    ENV.pop("SLIMGPT_COURSE_CACHE")

# The reference files, in dependency order, that make up a complete submission.
REFERENCE_FILES = ["_checks.py", "damping.py", "hessian.py", "obs.py", "heads.py", "channels.py", "ipr.py"]


def _sandbox_mode() -> str:
    sys.path.insert(0, str(ASSIGNMENTS))
    try:
        import _sandbox
    finally:
        sys.path.remove(str(ASSIGNMENTS))
    return _sandbox.mode()


def _reference_dir() -> Path:
    from slimgpt import reference
    return Path(reference.__file__).parent


def honest_source() -> str:
    """The reference's source as one standalone module: relative imports removed (the names they
    bring are defined earlier in the same module), `from . import _checks` replaced by the module
    itself (the _checks helpers are top-level functions here), one `from __future__` at the top."""
    parts = ["from __future__ import annotations\n\nimport sys\n"]
    for name in REFERENCE_FILES:
        src = (_reference_dir() / name).read_text()
        lines = src.splitlines()
        for node in ast.parse(src).body:
            if isinstance(node, ast.ImportFrom) and (node.level or node.module == "__future__"):
                for i in range(node.lineno - 1, node.end_lineno):
                    lines[i] = ""
                if node.level and any(a.name == "_checks" for a in node.names):
                    lines[node.lineno - 1] = "_checks = sys.modules[__name__]"
        parts.append(f"# ---- reference/{name}\n" + "\n".join(lines))
    return "\n\n".join(parts) + "\n"


def honest_course_source() -> str:
    """The course's extra functions written out plainly: reference/downdate.py with its loops named
    *_fast, a constructed input for Unit 2 and the questions' numbers (computed here, as a student
    computes them with their own functions)."""
    sys.path.insert(0, str(ASSIGNMENTS))
    try:
        import units
    finally:
        sys.path.remove(str(ASSIGNMENTS))
    src = (_reference_dir() / "downdate.py").read_text()
    lines = src.splitlines()
    for node in ast.parse(src).body:
        if isinstance(node, ast.ImportFrom) and (node.level or node.module == "__future__"):
            for i in range(node.lineno - 1, node.end_lineno):
                lines[i] = ""
    src = "\n".join(lines)
    for name in ("prune_columns", "prune_heads", "prune_channels"):
        src = src.replace(f"def {name}(", f"def {name}_fast(")
    answers = {q: float(f()) for q, f in units.QUESTIONS.items()}
    return f"""
# ---- reference/downdate.py, its loops renamed *_fast
{src}

def gcd_counterexample():
    # one head of near-copies of one signal: each column alone looks cheap, the head is not
    rng = np.random.default_rng(0)
    X = rng.standard_normal((512, 16))
    X[:, 4:8] = 1.5 * rng.standard_normal((512, 1)) + 0.05 * rng.standard_normal((512, 4))
    W = rng.standard_normal((8, 16))
    W[:, 4:8] = 3.0 * np.abs(rng.standard_normal((8, 4)))
    return W, hessian(X), 4


ANSWERS = {answers!r}
""" + LAZY_SOURCE + pipeline_source()


def pipeline_source() -> str:
    """Unit 3 written out plainly: numpy_llama.py's forward (as a student writes it from the
    conventions) and the layer-wise loop over it."""
    forward = (ASSIGNMENTS / "numpy_llama.py").read_text().replace("from __future__ import annotations", "")
    return forward + PIPELINE_LOOP


PIPELINE_LOOP = """
def prune_llama(weights, config, token_ids, target, *, percdamp=0.01):
    L, d, F = config["num_hidden_layers"], config["head_dim"], config["intermediate_size"]
    n_heads, eps = config["num_attention_heads"], config["rms_norm_eps"]
    ratios = ipr_for_target(L, target)
    w = {k: np.array(v, dtype=np.float64) for k, v in weights.items()}
    heads, channels = np.zeros((L, n_heads), np.int64), np.zeros((L, F), np.int64)
    traces, norms = np.zeros((L, 2)), np.zeros((L, 2))
    h = w["model.embed_tokens.weight"][np.asarray(token_ids)]          # layer 0's inputs
    for i, r in enumerate(ratios):
        p = f"model.layers.{i}."
        x = rms_norm(h, w[p + "input_layernorm.weight"], eps)
        H = hessian(attention_heads(w, config, i, x).reshape(-1, n_heads * d))
        W, gone = prune_heads(w[p + "self_attn.o_proj.weight"], H, round(n_heads * r), d, percdamp=percdamp)
        keep = np.flatnonzero(~np.isin(np.arange(n_heads * d) // d, gone))
        w[p + "self_attn.o_proj.weight"] = W[:, keep]
        for n in "qkv":
            w[p + f"self_attn.{n}_proj.weight"] = w[p + f"self_attn.{n}_proj.weight"][keep]
        heads[i, gone], traces[i, 0] = 1, np.trace(H)
        h = attention_block(w, config, i, h)                           # through the pruned attention
        x = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        H = hessian(ffn_channels(w, i, x).reshape(-1, F))
        W, gone = prune_channels(w[p + "mlp.down_proj.weight"], H, round(F * r), percdamp=percdamp)
        keep = np.setdiff1d(np.arange(F), gone)
        w[p + "mlp.down_proj.weight"] = W[:, keep]
        for n in ("gate", "up"):
            w[p + f"mlp.{n}_proj.weight"] = w[p + f"mlp.{n}_proj.weight"][keep]
        channels[i, gone], traces[i, 1] = 1, np.trace(H)
        norms[i] = np.linalg.norm(w[p + "self_attn.o_proj.weight"]), np.linalg.norm(w[p + "mlp.down_proj.weight"])
        h = ffn_block(w, config, i, h)                                 # the next layer's inputs
    return ratios, heads, channels, traces, norms
"""


# Unit 4's lazy form written out plainly (docs/cpp.md): G = MᵀM − UᵀU is never formed; the loop
# reads the removed set's rows, the diagonal head blocks and the diagonal.
LAZY_SOURCE = """
class LazyInverse:
    def __init__(self, H):
        self.M = solve_triangular(cholesky(H, "H"), np.eye(len(H)), lower=True)   # M = L^-1, G = M^T M
        self.U = np.zeros((0, len(H)))                                            # stacked Ut rows
        self.removed = np.zeros(len(H), dtype=bool)

    def rows(self, S):
        i0 = int(S.min())                     # M is lower triangular: M[i, S] = 0 above min S
        GS = self.M[i0:, S].T @ self.M[i0:, :] - self.U[:, S].T @ self.U
        GS[:, self.removed] = 0.0
        return GS

    def block_diagonal(self, d):
        G = np.eye(self.M.shape[0])
        for C in np.arange(len(G)).reshape(-1, d):
            if not self.removed[C].any():
                B = self.M[:, C].T @ self.M[:, C] - self.U[:, C].T @ self.U[:, C]
                G[np.ix_(C, C)] = 0.5 * (B + B.T)
        return G

    def diagonal(self):
        return np.sum(self.M ** 2, axis=0) - np.sum(self.U ** 2, axis=0)

    def remove(self, W, S, compensate):
        GS = self.rows(S)
        L = cholesky(GS[:, S], "H^-1 block of the removed set")
        Ut = solve_triangular(L, GS, lower=True)
        loss = 0.0
        if compensate:
            E = solve_triangular(L, W[:, S].T, lower=True).T
            W = W - E @ Ut
            loss = 0.5 * float(np.sum(E ** 2))
        W[:, S] = 0.0
        self.U = np.vstack([self.U, Ut])
        self.removed[S] = True
        return W, loss


def prune_heads_lazy(W, H, n_prune, head_dim, *, percdamp=0.0, gcd=True, compensate=True, head_groups=None):
    W, H, d, n_heads, n_prune, percdamp, groups, quota = _heads_arguments(W, H, n_prune, head_dim, percdamp,
                                                                         head_groups)
    if n_prune == 0:
        return W, np.zeros(0, dtype=np.int64)

    def greedy(W, H):
        W0, G = W.copy(), LazyInverse(H)
        pruned = np.zeros(n_heads, dtype=bool)
        for _ in range(n_prune):
            E = head_errors(W, G.block_diagonal(d), d, gcd=gcd)
            full = np.bincount(groups[pruned], minlength=groups.max() + 1) >= quota
            E[pruned | full[groups]] = np.inf
            j = int(np.argmin(E))
            W, _ = G.remove(W, np.arange(j * d, (j + 1) * d), compensate)
            pruned[j] = True
        return W, np.flatnonzero(pruned).astype(np.int64), 0.0

    (W_new, heads, _), _ = solve_with_damping(W, H, percdamp, greedy)
    return W_new, heads


def prune_channels_lazy(W, H, n_prune, *, percdamp=0.0, group_sizes=None, compensate=True):
    W, H, n_prune, percdamp, sizes = _channels_arguments(W, H, n_prune, percdamp, group_sizes)
    if n_prune == 0:
        return W, np.zeros(0, dtype=np.int64)

    def greedy(W, H):
        G = LazyInverse(H)
        for g in sizes:
            eps = np.sum(W ** 2, axis=0) / np.where(G.removed, 1.0, G.diagonal())
            eps[G.removed] = np.inf
            S = np.argsort(eps, kind="stable")[:g]
            W, _ = G.remove(W, S, compensate)
        return W, np.flatnonzero(G.removed).astype(np.int64), 0.0

    (W_new, channels, _), _ = solve_with_damping(W, H, percdamp, greedy)
    return W_new, channels
"""


def _submission(tmp_path, name, extra="", *, base=True) -> Path:
    """A submission file: the honest module (base=True) followed by `extra`, or `extra` alone."""
    path = tmp_path / name
    path.write_text((honest_source() if base else "") + "\n" + textwrap.dedent(extra))
    return path


def _grade(student, golden, *extra, timeout=300):
    args = [sys.executable, str(GRADER), str(student)] + (["--cases", str(golden)] if golden else []) + list(extra)
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=ENV)
    return proc.returncode, proc.stdout + proc.stderr


def _grade_many(jobs: list[tuple]) -> list[tuple[int, str]]:
    """_grade(*job) for each job, three at a time: the graders mostly wait on their workers."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda job: _grade(*job), jobs))


# ------------------------------------------------------------------------------------------------
# The honest implementation and the skeleton


def test_the_honest_source_has_no_slimgpt_import():
    src = honest_source()
    tree = ast.parse(src)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("slimgpt"), ast.unparse(node)
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("slimgpt") for a in node.names), ast.unparse(node)
    # the top-level names of the pasted files do not collide (each file's would shadow another's)
    seen = {}
    for name in REFERENCE_FILES:
        for node in ast.parse((_reference_dir() / name).read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                assert node.name not in seen, f"{node.name} in {name} and {seen[node.name]}"
                seen[node.name] = name


def test_honest_implementation_scores_exactly_100(golden, tmp_path):
    rc, out = _grade(_submission(tmp_path, "honest.py"), golden)
    assert rc == 0, out
    assert "score: 100.0 / 100" in out
    assert out.count("ok Task") == 6 and "FAIL" not in out and "Traceback" not in out
    # a copy of the reference is not graded down, but the instructor is told
    assert "function(s) are near-verbatim copies of slimgpt's reference" in out


def test_honest_course_solution_earns_every_unit_point(golden, tmp_path):
    path = tmp_path / "course.py"
    path.write_text(honest_source() + honest_course_source())
    rc, out = _grade(path, golden, *[a for n in range(7, 13) for a in ("--task", str(n))])
    assert rc == 0, out
    assert "score: 120.0 / 120 points (tasks 7, 8, 9, 10, 11, 12 only)" in out and "FAIL" not in out


def test_block_form_of_the_cholesky_step_also_passes(golden, tmp_path):
    """The block form (slimgpt.reference.downdate.remove_set: factor G[S, S] alone, with SciPy)
    is an honest Cholesky form too."""
    path = _submission(tmp_path, "block.py", """
        import scipy.linalg as _sl

        def prune_columns_cholesky(W, Hinv, columns, *, survivors=None):
            W = np.array(W, dtype=np.float64)
            G = np.asarray(Hinv, dtype=np.float64)
            S = np.asarray(columns, dtype=np.int64)
            K = np.setdiff1d(np.arange(W.shape[1]), S) if survivors is None else np.asarray(survivors, dtype=np.int64)
            L = _sl.cholesky(G[np.ix_(S, S)], lower=True)              # G_SS = L L^T
            Ut = _sl.solve_triangular(L, G[np.ix_(S, K)], lower=True)  # rows of U over K
            E = _sl.solve_triangular(L, W[:, S].T, lower=True).T        # scaled errors e_i
            W[:, K] -= E @ Ut
            W[:, S] = 0.0
            return W, np.sum(E ** 2, axis=0)
    """)
    rc, out = _grade(path, golden, "--task", "2")
    assert rc == 0, out
    assert "ok Task 2" in out and "score: 25.0 / 25 points (task 2 only)" in out


def test_skeleton_scores_0_and_says_not_implemented(golden):
    rc, out = _grade(SKELETON, golden, *[a for n in range(1, 13) for a in ("--task", str(n))])
    assert "near-verbatim copies" not in out
    assert rc == 1, out
    assert "score: 0.0 / 220 points (tasks 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 only)" in out
    assert out.count("not implemented yet") == 12 and "Traceback" not in out


def test_lazy_form_is_timed_against_reinversion():
    """Unit 4's timing assertion: the ratio of medians decides; a timed case that failed, or a
    function that did not run, fails it too (a NaN median must not pass)."""
    tables = (oracle.SIGNATURES, oracle.OUTPUTS, oracle.OPERATIONS)
    saved = [dict(t) for t in tables]
    sys.path.insert(0, str(ASSIGNMENTS))
    try:
        import grade   # registers the course's operations: undone below, for the other tests
    finally:
        sys.path.remove(str(ASSIGNMENTS))
        for table, before in zip(tables, saved):
            table.clear()
            table.update(before)

    def timed(lazy_seconds, reinvert_seconds, status=oracle.PASS):
        cases = [grade.GradedCase(f"prune_heads.timing_{k}", "prune_heads", oracle.PASS, seconds=s)
                 for k, s in enumerate(reinvert_seconds)]
        cases += [grade.GradedCase(f"prune_heads_lazy.timing_{k}", "prune_heads_lazy", status, seconds=s)
                  for k, s in enumerate(lazy_seconds)]
        return grade._timing_case(12, cases, 0)[0]

    assert timed([0.1, 0.5, 0.1], [0.6, 0.6, 0.1]).status == oracle.PASS      # medians 0.1 < 0.6
    slow = timed([0.9, 0.9, 0.1], [0.6, 0.6, 0.6])
    assert slow.status == oracle.FAIL and "ratio 1.50" in slow.message
    assert timed([0.1] * 3, [0.6] * 3, status=oracle.FAIL).status == oracle.FAIL
    assert timed([], [0.6] * 3).status == oracle.FAIL
    assert grade._timing_case(4, [grade.GradedCase("prune_heads.x", "prune_heads", oracle.PASS)], 0) == []


def test_numpy_forward_matches_slimgpts_model_dense_and_pruned():
    """numpy_llama (the expected perplexities of Unit 3) against slimgpt's torch model in float64,
    on a random tiny LLaMA and on it after the pipeline removed heads and channels."""
    import torch
    from slimgpt.evaluate import perplexity
    from slimgpt.loaders.tiny import tiny_model
    from slimgpt.oracle.trace import CONFIG_FIELDS, run_pipeline

    sys.path.insert(0, str(ASSIGNMENTS))
    try:
        import numpy_llama
    finally:
        sys.path.remove(str(ASSIGNMENTS))
    dense = tiny_model("tiny-llama", num_hidden_layers=2)
    config = {k: getattr(dense.config, k) for k in CONFIG_FIELDS}
    ids = np.random.default_rng(3).integers(0, 256, (4, 32))
    weights = {k: v.double().numpy() for k, v in dense.state_dict().items()}
    result, _ = run_pipeline(weights, config, ids, [0.25, 0.5])
    for model in (dense, result.model):
        model = model.double()
        got = numpy_llama.model_perplexity({k: v.numpy() for k, v in model.state_dict().items()}, config, ids)
        want = perplexity(model, torch.as_tensor(ids).reshape(-1), seqlen=32)["ppl"]
        assert got == pytest.approx(want, rel=1e-5)
    assert result.model.model.layers[1].self_attn.q_proj.weight.shape[0] == 4 * config["head_dim"]


def test_pipeline_calibrated_on_the_dense_model_fails_task_11(tmp_path):
    """Unit 3's point: layer i is calibrated on the outputs of the already-pruned earlier layers."""
    path = tmp_path / "dense_inputs.py"
    src = honest_source() + honest_course_source()
    for block in ("attention_block", "ffn_block"):   # the next inputs from the dense weights
        src = src.replace(f"h = {block}(w, config, i, h)  ", f"h = {block}({{**w, **weights}}, config, i, h)  ")
    path.write_text(src)
    rc, out = _grade(path, None, "--task", "11")
    assert rc == 1, out
    assert "FAIL prune_llama.trained_ipr" in out and "FAIL model_perplexity" not in out


# Steps a skeleton docstring or a level-0 hint must not give away (the student derives them).
STEPS = [r"2\s*X\^?T\s*X", r"/\s*U\[i,\s*i\]", r"L_j\[k,\s*k\]", r"\(T\s*-\s*512\)", r"log\(i\s*\+\s*1\)",
         r"\+inf", r"by the identity", r"lgamma", r"outer", r"n_seen \* H", r"G\[q,\s*q\]", r"argsort", r"argmin",
         r"mean\(diag", r"// \(n_heads", r"chol\(G\["]


def test_skeleton_and_level_0_hints_give_no_steps():
    sys.path.insert(0, str(ASSIGNMENTS))
    try:
        import _diagnose
    finally:
        sys.path.remove(str(ASSIGNMENTS))
    texts = {"student.py": SKELETON.read_text()}
    texts.update({f"level-0 hint of {op}": _diagnose.hint(op, pattern, 0)
                  for op in _diagnose.PROPERTY for pattern in [None, *_diagnose.PATTERNS]})
    for where, text in texts.items():
        for step in STEPS:
            assert not re.search(step, text), f"{where} gives away a step: {step}"
    # the higher levels do say more, and level 3 gives the step
    assert re.search(r"L_j\[k, k\]", _diagnose.hint("head_errors", "summed_single", 3))


def test_skeleton_has_every_reference_operation_with_a_paper_citation():
    spec = importlib.util.spec_from_file_location("student_skeleton", SKELETON)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for op in oracle.SIGNATURES:
        fn = getattr(mod, op)
        assert fn.__doc__ and ("Eq." in fn.__doc__ or "spec §" in fn.__doc__.lower()), op
        with pytest.raises(NotImplementedError):
            oracle.call(fn, op, {name: None for name in oracle.SIGNATURES[op]})
    assert issubclass(mod.NotPositiveDefiniteError, Exception)
    w = mod.DampingWarning("retried", percdamp=0.01, requested=0.0)
    assert isinstance(w, UserWarning) and w.percdamp == 0.01 and w.requested == 0.0


def test_skeleton_and_readme_cite_docs_spec_and_no_absolute_path():
    spec_md = (ROOT / "docs" / "spec.md").read_text()
    for path in (SKELETON, ASSIGNMENTS / "README.md"):
        text = path.read_text()
        assert "docs/spec.md" in text, path
        assert not re.search(r"(?<![\w.~])/(work|home|root|tmp|usr|opt|mnt)/", text), path
        assert "slimgpt-spec.md" not in text, path
        for section in set(re.findall(r"§(\d+(?:\.\d+)?)", text)):
            assert re.search(rf"^#+ {re.escape(section)}[ .]", spec_md, re.M), f"{path.name}: no spec §{section}"


# ------------------------------------------------------------------------------------------------
# Wrong implementations: failures with useful messages


def test_summed_single_column_errors_fail_task_3_with_a_hint(golden, tmp_path):
    wrong = _submission(tmp_path, "summed.py", """
        def head_errors(W, Hinv, head_dim, *, gcd=True):
            single = np.sum(np.asarray(W) ** 2, axis=0) / np.diag(Hinv)   # Eq. (4) per column
            return single.reshape(-1, head_dim).sum(axis=1)
    """)
    rc, out = _grade(wrong, golden, "--task", "2", "--task", "3", "--task", "4", "--hints", "1")
    assert rc == 1
    assert "XX Task 3" in out and "XX Task 4" in out and "ok Task 2" in out
    # one line for the three cases that show the same mistake, diagnosed from the output
    assert "FAIL head_errors: 4 cases show the same problem (basic, one_head, correlated_head, six_heads_of_12)" in out
    assert "hint: your head errors are the single-column errors summed over each head" in out
    # the difference, not the expected list
    assert "pruned_heads: 1 index(es) missing from yours: [5]; unexpected: [3]" in out
    assert "expected indices" not in out
    assert "hint: your heads are the ones the summed single-column errors choose" in out
    assert "Eq. 3 downdate" not in out  # level 1 says what the output shows, not why


def test_no_compensation_fails_task_2(golden, tmp_path):
    wrong = _submission(tmp_path, "nocomp.py", """
        _honest_prune_columns = prune_columns

        def prune_columns(W, H, columns, *, percdamp=0.0, compensate=True):
            return _honest_prune_columns(W, H, columns, percdamp=percdamp, compensate=False)
    """)
    rc, out = _grade(wrong, golden, "--task", "2", "--hints", "1", "-v")
    assert rc == 1
    assert "XX Task 2" in out and "FAIL prune_columns.single" in out
    assert "W_new:" in out and "max abs err" in out
    assert "hint: your survivors are the input columns unchanged: nothing was compensated" in out
    assert "Task 3" not in out


def test_naive_form_does_not_earn_the_cholesky_points(golden, tmp_path):
    """prune_columns through the student's own prune_columns_naive: the same numbers, but no
    Cholesky of the reordered H^-1, so Task 2's Cholesky cases fail with the spec §2.3 hint."""
    wrong = _submission(tmp_path, "naive.py", """
        def prune_columns(W, H, columns, *, percdamp=0.0, compensate=True):
            if not compensate:
                W0, _ = prepare_hessian(np.asarray(W, dtype=np.float64), np.asarray(H, dtype=np.float64), percdamp)
                W0[:, np.asarray(columns, dtype=np.int64)] = 0.0
                return W0
            return prune_columns_naive(W, H, columns, percdamp=percdamp)

        def prune_columns_cholesky(W, Hinv, columns, *, survivors=None):
            # Eqs. (3)-(4) one column at a time on the given inverse: right numbers, wrong method
            W = np.array(W, dtype=np.float64)
            G = np.array(Hinv, dtype=np.float64)
            S = np.asarray(columns, dtype=np.int64)
            keep = np.ones(W.shape[1], dtype=bool)
            if survivors is not None:
                keep[:] = False
                keep[np.asarray(survivors, dtype=np.int64)] = True
            keep[S] = True
            G = G[np.ix_(keep, keep)]
            idx = np.flatnonzero(keep)
            Wk, losses = W[:, idx], []
            for q in S:
                j = int(np.flatnonzero(idx == q)[0])
                losses.append(float(np.sum(Wk[:, j] ** 2) / G[j, j]))
                Wk = Wk - np.outer(Wk[:, j] / G[j, j], G[j, :])
                G = G - np.outer(G[:, j], G[j, :]) / G[j, j]
            W[:, idx] = Wk
            W[:, S] = 0.0
            return W, np.array(losses)
    """)
    rc, out = _grade(wrong, golden, "--task", "2", "-v")
    assert rc == 1
    assert "XX Task 2" in out
    for case in ("prune_columns.single", "prune_columns.set_unsorted", "prune_columns.damping_retry",
                 "prune_columns_cholesky.single", "prune_columns_cholesky.ordered_set"):
        assert f"FAIL {case}\n" in out, case
    assert "did not use the Cholesky form" in out and "max abs err" not in out  # the numbers are right
    assert "hint: spec §2.3: the factor of the reordered H^-1 must carry the result" in out
    # the naive oracle itself and the cases that need no factorisation still pass
    assert "FAIL prune_columns_naive" not in out and "FAIL prune_columns.empty" not in out
    assert "FAIL prune_columns.no_compensate" not in out and "FAIL reconstruction_error" not in out


@pytest.mark.parametrize("kind, extra, expected", [
    pytest.param("never warns", """
        import types as _types
        warnings = _types.SimpleNamespace(warn=lambda *args, **kwargs: None)
     """, "expected a DampingWarning with percdamp=0.01", id="never_warns"),
    pytest.param("wrong percdamp", """
        _honest_init = DampingWarning.__init__

        def _init(self, message, percdamp, requested):
            _honest_init(self, message, 0.1, requested)

        DampingWarning.__init__ = _init
     """, "DampingWarning warned with percdamp = 0.1; expected percdamp=0.01", id="wrong_percdamp"),
])
def test_damping_warning_is_graded(golden, tmp_path, kind, extra, expected):
    rc, out = _grade(_submission(tmp_path, "warn.py", extra), golden, "--task", "2", "--task", "4", "-v")
    assert rc == 1, out
    failed = sorted(re.findall(r"FAIL (\S+)", out))
    assert failed == ["prune_columns.damping_retry", "prune_columns_naive.damping_retry",
                      "prune_heads.damping_retry"], out
    assert expected in out and "spec §2.4" in out


def test_a_damping_warning_without_a_retry_fails(golden, tmp_path):
    wrong = _submission(tmp_path, "spurious.py", """
        _honest_prune_columns = prune_columns

        def prune_columns(W, H, columns, *, percdamp=0.0, compensate=True):
            warnings.warn(DampingWarning("just in case", percdamp, percdamp))
            return _honest_prune_columns(W, H, columns, percdamp=percdamp, compensate=compensate)
    """)
    rc, out = _grade(wrong, golden, "--task", "2", "-v")
    assert rc == 1
    assert "FAIL prune_columns.single" in out and "warn only when a retry was needed" in out
    assert "FAIL prune_columns_naive" not in out


def test_wrong_variants_of_the_spec_fail_with_a_diagnosis(golden, tmp_path):
    """Five mistakes at once, each in a function the others' cases do not depend on: a naive
    prune_columns with one discarded Cholesky of G[S, S]; a naive prune_columns_cholesky with a trace
    of the factor added far below the tolerance; damping before the dead-input fix; compensate=False
    without the H downdate; channel ties to the highest index. Each fails its own cases."""
    wrong = _submission(tmp_path, "variants.py", """
        _honest_naive, _honest_heads, _honest_channels = prune_columns_naive, prune_heads, prune_channels

        def prune_columns(W, H, columns, *, percdamp=0.0, compensate=True):
            W1, H1 = prepare_hessian(np.asarray(W, dtype=float), np.asarray(H, dtype=float), percdamp)
            S = np.asarray(columns, dtype=np.int64)
            if not compensate:
                W1[:, S] = 0.0
                return W1
            if S.size:
                np.linalg.cholesky(np.linalg.inv(H1)[np.ix_(S, S)])   # computed, then thrown away
            return _honest_naive(W, H, columns, percdamp=percdamp)

        def prune_columns_cholesky(W, Hinv, columns, *, survivors=None):
            # Eqs. (3)-(4) one column at a time, plus a trace of a factor far below any tolerance
            W, G = np.array(W, dtype=float), np.array(Hinv, dtype=float)
            S = np.asarray(columns, dtype=np.int64)
            K = np.setdiff1d(np.arange(W.shape[1]), S) if survivors is None else np.asarray(survivors)
            idx = np.concatenate([S, K])
            Wk, Gk, losses = W[:, idx], G[np.ix_(idx, idx)], []
            for i in range(S.size):
                losses.append(float(np.sum(Wk[:, i] ** 2) / Gk[i, i]))
                Wk = Wk - np.outer(Wk[:, i] / Gk[i, i], Gk[i, :])
                Gk = Gk - np.outer(Gk[:, i], Gk[i, :]) / Gk[i, i]
            W[:, idx] = Wk
            W[:, S] = 0.0
            if S.size:
                W[:, K] += 1e-300 * np.linalg.cholesky(G[np.ix_(S, S)])[0, 0]
            return W, np.array(losses)

        def prune_columns_naive(W, H, columns, *, percdamp=0.0):
            H = np.asarray(H, dtype=float)
            H = H + percdamp * np.mean(np.diag(H)) * np.eye(len(H))        # damping first
            return _honest_naive(W, H, columns)

        def prune_heads(W, H, n_prune, head_dim, *, percdamp=0.0, gcd=True, compensate=True, head_groups=None):
            if compensate:
                return _honest_heads(W, H, n_prune, head_dim, percdamp=percdamp, gcd=gcd, head_groups=head_groups)
            W, H = prepare_hessian(np.asarray(W, dtype=float), np.asarray(H, dtype=float), percdamp)
            G, pruned = np.linalg.inv(H), np.zeros(W.shape[1] // head_dim, dtype=bool)
            for _ in range(n_prune):                                       # G never downdated
                E = head_errors(W, G, head_dim, gcd=gcd)
                E[pruned] = np.inf
                j = int(np.argmin(E))
                W[:, j * head_dim:(j + 1) * head_dim] = 0.0
                pruned[j] = True
            return W, np.flatnonzero(pruned)

        def prune_channels(W, H, n_prune, *, percdamp=0.0, group_sizes=None, compensate=True):
            rev = np.arange(np.shape(W)[1])[::-1]                          # ties to the highest index
            W2, ch = _honest_channels(np.asarray(W)[:, rev], np.asarray(H)[np.ix_(rev, rev)], n_prune,
                                      percdamp=percdamp, group_sizes=group_sizes, compensate=compensate)
            return W2[:, np.argsort(rev)], np.sort(rev[ch])
    """)
    rc, out = _grade(wrong, golden, "--task", "2", "--task", "4", "--task", "5", "--hints", "1", "-v")
    assert rc == 1
    failed = set(re.findall(r"FAIL (\S+)", out))
    assert {"prune_columns.single", "prune_columns_cholesky.single", "prune_columns.dead_damped",
            "prune_columns_naive.dead_damped", "prune_heads.no_compensate_downdates", "prune_channels.ties"} <= failed, out
    assert "prune_columns_naive.damped" not in failed and "prune_heads.basic" not in failed
    assert "factorised G[S, S] but its result does not reach W_new" in out
    assert "hint: your result matches damping H before the dead inputs were handled" in out
    assert "hint: with compensate=False your later choices ignore the heads/channels already removed" in out
    assert "hint: on exactly equal errors you chose the higher indices" in out
    assert "Traceback" not in out


def test_rounding_in_removed_columns_is_its_own_failure(golden, tmp_path):
    """A removed column left at 1e-16 is within the weights' tolerance (a floor tied to max|W|, not
    0), and fails the exact-zero assertion (one per task) with a message that says so."""
    wrong = _submission(tmp_path, "rounding.py", """
        _honest_cholesky = prune_columns_cholesky

        def prune_columns_cholesky(W, Hinv, columns, *, survivors=None):
            W_new, losses = _honest_cholesky(W, Hinv, columns, survivors=survivors)
            W_new[:, np.asarray(columns, dtype=np.int64)] = 1e-16
            return W_new, losses
    """)
    rc, out = _grade(wrong, golden, "--task", "2", "--task", "4", "-v")
    assert rc == 1
    assert "must be exactly 0; max |W_new| there is 1.000e-16" in out
    assert "FAIL prune_columns_cholesky.removed_columns_exactly_zero" in out
    assert "FAIL prune_heads.removed_columns_exactly_zero" in out
    assert "prune_heads.all: W_new: column(s) [0, 1, 2, 3, 4, 5, 6, 7, ... (64 in all)] are removed" in out
    assert "out of tolerance" not in out and "allowed there 0.000e+00" not in out
    assert "24/25  cases   19.2/20 points" in out  # one assertion per function, not every case
    # the header's failures are the FAIL lines listed under it: one per function
    for block in re.split(r"\n(?=XX )", out.split("\n\nscore")[0])[1:]:
        passed, total = map(int, re.search(r"(\d+)/(\d+)  cases", block).groups())
        assert block.count("FAIL ") == total - passed == 1 + block.startswith("XX Task 2"), block


# ------------------------------------------------------------------------------------------------
# Gaming the grader


def _reexports():
    from slimgpt import reference
    ref_init = Path(reference.__file__)
    wrappers = "\n".join(f"def {op}(*args, **kwargs):\n    return r.{op}(*args, **kwargs)\n"
                         for op in oracle.SIGNATURES)
    cases = {
        "star import": "from slimgpt.reference import *\n",
        "module alias with wrappers": "import slimgpt.reference as r\n" + wrappers,
        "importlib at import": ("import importlib\nr = importlib.import_module('slimgpt.reference')\n"
                                + wrappers),
        "importlib in each call": "".join(
            f"def {op}(*args, **kwargs):\n    import importlib\n"
            f"    return importlib.import_module('slimgpt.reference').{op}(*args, **kwargs)\n"
            for op in oracle.SIGNATURES),
        "by file path": (
            "import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('ref', {str(ref_init)!r},\n"
            f"    submodule_search_locations=[{str(ref_init.parent)!r}])\n"
            "r = importlib.util.module_from_spec(spec)\nsys.modules['ref'] = r\nspec.loader.exec_module(r)\n"
            + wrappers),
        "path hacking": (
            "import sys\n"
            "sys.meta_path[:] = [f for f in sys.meta_path if 'Slimgpt' not in type(f).__name__]\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "from slimgpt.reference import *\n"),
    }
    core = importlib.util.find_spec("slimgpt._core")
    if core is not None and core.origin:
        cases["the compiled core by file path"] = (
            "import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('_core', {core.origin!r})\n"
            "core = importlib.util.module_from_spec(spec)\n")
    return cases


def test_reexporting_slimgpt_scores_0(golden, tmp_path):
    attempts = _reexports()
    runs = _grade_many([(_submission(tmp_path, f"reexport{i}.py", src, base=False), golden)
                        for i, src in enumerate(attempts.values())])
    for how, (rc, out) in zip(attempts, runs):
        assert rc == 1, (how, out)
        assert "score: 0.0 / 100" in out, how
        assert NOT_ALLOWED in out and "Traceback" not in out, (how, out)


# The attacks below beat the audit hook alone (run them with --isolation audit to see it); they
# hold only where the worker runs in its private file tree (README, "What is guaranteed where").
NAMESPACES = pytest.mark.skipif(_sandbox_mode() == "audit", reason="no namespaces here: the audit hook only")


def _site_packages() -> str:
    import numpy
    return str(Path(numpy.__file__).parents[1])


ATTACKS = {
    # an interpreter started with no audit event: subprocess with a module `sys` whose audit() does
    # nothing, so _posixsubprocess.fork_exec runs unannounced; the child imports slimgpt
    "unannounced_process": f"""
        import os, subprocess, sys, numpy as np

        class _Quiet:
            def __getattr__(self, name):
                return getattr(sys, name)

            @staticmethod
            def audit(*args):
                pass

        subprocess.sys = _Quiet()
        CHILD = ("import sys, numpy as np; sys.path.insert(0, {_site_packages()!r}); "
                 "from slimgpt.reference import hessian; "
                 "np.save(sys.argv[2], hessian(np.load(sys.argv[1])))")

        def hessian(X):
            d = os.path.join(os.getcwd(), "out")
            np.save(os.path.join(d, "x.npy"), X)
            p = subprocess.run([sys.executable, "-c", CHILD, os.path.join(d, "x.npy"), os.path.join(d, "h.npy")],
                               capture_output=True, text=True)
            if p.returncode:
                raise RuntimeError("the child could not compute H: " + p.stderr.strip().splitlines()[-1])
            return np.load(os.path.join(d, "h.npy"))
    """,
    # replace a function os.path.realpath relies on, so every path looks like the submission's own,
    # then load the reference by path
    "realpath_rewired": f"""
        import importlib.util, os, posixpath, sys
        REF = {str(_reference_dir() / "__init__.py")!r}
        _abspath = posixpath.abspath
        posixpath.abspath = lambda p: os.path.join(os.getcwd(), "submission")
        try:
            spec = importlib.util.spec_from_file_location("ref", REF, submodule_search_locations=[os.path.dirname(REF)])
            ref = importlib.util.module_from_spec(spec)
            sys.modules["ref"] = ref
            spec.loader.exec_module(ref)
        finally:
            posixpath.abspath = _abspath
        hessian, accumulate_hessian = ref.hessian, ref.accumulate_hessian
    """,
    # ctypes: libc's open() on the reference file, below the audit hook
    "ctypes_open": f"""
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        fd = libc.open({str(_reference_dir() / "hessian.py").encode()!r}, 0)
        if fd < 0:
            raise OSError("libc.open could not open the reference")

        def hessian(X):
            return 2.0 * X.T @ X / X.shape[0]
    """,
    # another process's view of the file system and the environment: /proc/<pid>/root, /proc/1/cwd,
    # and any path in the environment
    "proc_and_environment": f"""
        import os
        found = []
        places = ["/proc/1/root" + {str(_reference_dir())!r}, "/proc/1/cwd", "/proc/self/root" + {str(ROOT)!r}]
        for p in places + [v for v in os.environ.values() if v.startswith("/")]:
            try:
                found += [p + "/" + f for f in os.listdir(p) if "reference" in f or f == "hessian.py"]
            except OSError:
                pass
        if found:
            raise RuntimeError("reached " + ", ".join(found))

        def hessian(X):
            return 2.0 * X.T @ X / X.shape[0]
    """,
    # sys.path tricks: the repository and site-packages first, the guard's finder removed, a fresh
    # path finder asked directly
    "sys_path_finder": f"""
        import importlib.machinery, sys
        sys.meta_path[:] = [f for f in sys.meta_path if "Slimgpt" not in type(f).__name__]
        sys.path[:0] = [{str(ROOT)!r}, {_site_packages()!r}]
        spec = importlib.machinery.PathFinder.find_spec("slimgpt", sys.path)
        if spec is not None:
            raise RuntimeError("found slimgpt at " + str(spec.origin))

        def hessian(X):
            return 2.0 * X.T @ X / X.shape[0]
    """,
}


@NAMESPACES
def test_attacks_do_not_reach_slimgpt(golden, tmp_path):
    """Each attack either reaches nothing (the honest Hessian passes, so the file tree is the only
    thing that stopped it) or fails with a message; none reads slimgpt."""
    runs = _grade_many([(_submission(tmp_path, f"{name}.py", src, base=False), golden, "--task", "1", "-v")
                        for name, src in ATTACKS.items()])
    for name, (rc, out) in zip(ATTACKS, runs):
        assert "isolation: namespaces" in out, name
        assert "reached /" not in out and "found slimgpt at" not in out and "SyntaxError" not in out, (name, out)
        if name in ("unannounced_process", "realpath_rewired"):
            assert rc == 1 and "score: 10.0 / 10" not in out, (name, out)
            assert "No module named 'slimgpt'" in out or "No such file or directory" in out, (name, out)
        assert "Traceback (most recent call last):\n  File \"" + str(GRADER) not in out, (name, out)


def test_submission_cannot_read_the_expected_outputs(golden, tmp_path):
    """Everything the worker can read holds inputs only; the real case directory is refused."""
    spy = _submission(tmp_path, "spy.py", f"""
        import glob, json, os
        import numpy as np

        GOLDEN = {str(golden)!r}

        def hessian(X):
            keys, json_secrets, golden = set(), [], []
            here = os.getcwd()
            for f in glob.glob(os.path.join(here, "**", "*"), recursive=True):
                if f.endswith(".npz"):
                    with np.load(f) as z:
                        keys.update(k.split(".")[0] for k in z.files)
                elif f.endswith(".json"):
                    text = open(f).read()
                    json_secrets += [w for w in ("out.", "tolerances", "rtol", "warns", "raises") if w in text]
            for f in [GOLDEN, os.path.join(GOLDEN, "index.json"),
                      os.path.join(GOLDEN, "cases", "hessian.basic.npz"), os.path.dirname(here)]:
                try:
                    (os.listdir if os.path.isdir(f) else lambda p: open(p, "rb").read(1))(f)
                    golden.append("read " + f)
                except PermissionError:
                    golden.append("refused")
            raise RuntimeError(f"keys={{sorted(keys)}} json={{sorted(set(json_secrets))}} golden={{golden}}")
    """, base=False)
    rc, out = _grade(spy, golden, "--task", "1")
    assert rc == 1
    assert "keys=['in'] json=[] golden=['refused', 'refused', 'refused', 'refused']" in out, out


def test_submission_cannot_overwrite_the_expected_outputs(golden, tmp_path):
    vandal = _submission(tmp_path, "vandal.py", f"""
        import os
        import shutil
        GOLDEN = {str(golden)!r}
        attempts = [lambda: open(os.path.join(GOLDEN, "index.json"), "a").write(" "),
                    lambda: os.rename(os.path.join(os.getcwd(), "cases", "index.json"), os.path.join(GOLDEN, "x.json")),
                    lambda: shutil.copyfile(os.path.join(os.getcwd(), "cases", "index.json"),
                                            os.path.join(GOLDEN, "index.json")),
                    lambda: os.symlink(os.path.join(os.getcwd(), "cases"), os.path.join(GOLDEN, "cases2"))]
        for attempt in attempts:
            try:
                attempt()
            except PermissionError:
                pass
    """)
    before = (Path(golden) / "index.json").read_bytes()
    rc, out = _grade(vandal, golden, "--task", "6")
    assert (Path(golden) / "index.json").read_bytes() == before
    assert sorted(p.name for p in Path(golden).iterdir()) == ["cases", "index.json"]
    assert rc == 0 and "ok Task 6" in out


def test_hanging_function_is_stopped_and_reported(golden, tmp_path):
    hang = _submission(tmp_path, "hang.py", """
        def head_errors(W, Hinv, head_dim, *, gcd=True):
            while True:
                pass
    """)
    t0 = time.monotonic()
    rc, out = _grade(hang, golden, "--task", "3", "--task", "6", "--timeout", "2", timeout=120)
    assert time.monotonic() - t0 < 60
    assert rc == 1
    assert "FAIL head_errors.basic" in out and "timed out after 2 s" in out
    assert "not run: head_errors timed out on an earlier case" in out
    assert "ok Task 6" in out and "Traceback" not in out  # a fresh worker ran the other tasks


def test_exit_or_hang_at_import_is_reported(golden, tmp_path):
    cases = [("import os\nos._exit(0)\n", "the worker process ended while importing the submission (exit code 0)"),
             ("import sys\nsys.exit(3)\n", "cannot load the submission: SystemExit: 3"),
             ("while True:\n    pass\n", "importing the submission took longer than the time limit (2 s)")]
    runs = _grade_many([(_submission(tmp_path, f"bye{i}.py", body, base=False), golden, "--timeout", "2")
                        for i, (body, _) in enumerate(cases)])
    for (body, expected), (rc, out) in zip(cases, runs):
        assert rc == 1, body
        assert expected in out and "score: 0.0 / 100" in out and "Traceback" not in out, (body, out)


def test_crash_in_a_function_fails_its_cases_only(golden, tmp_path):
    crash = _submission(tmp_path, "crash.py", """
        def hessian(X):
            import faulthandler
            faulthandler._sigsegv()          # a segmentation fault in the worker
    """)
    rc, out = _grade(crash, golden, "--task", "1", "--task", "6", "-v")
    assert rc == 1
    assert "FAIL hessian.basic" in out and "died (killed by SIGSEGV" in out, out
    assert "ok Task 6" in out and "Traceback" not in out


# ------------------------------------------------------------------------------------------------
# The command line


def test_grader_exports_its_own_cases(tmp_path):
    """Without --cases the grader builds the cases itself (and the expected outputs only after
    the submission has run)."""
    rc, out = _grade(_submission(tmp_path, "honest.py"), None, "--task", "6")
    assert rc == 0, out
    assert "ok Task 6" in out and "score: 10.0 / 10 points (task 6 only)" in out


def _check_gradescope(results: dict) -> None:
    """Gradescope's autograder results format: a total score and a list of tests, each with a name,
    a score, a max_score and an output (gradescope-autograders.readthedocs.io, "specs")."""
    assert isinstance(results["score"], float) and isinstance(results["tests"], list)
    for t in results["tests"]:
        assert isinstance(t["name"], str) and isinstance(t["output"], str)
        assert isinstance(t["score"], (int, float)) and isinstance(t["max_score"], (int, float))
        assert 0 <= t["score"] <= t["max_score"]
    assert abs(sum(t["score"] for t in results["tests"]) - results["score"]) < 1e-6


def test_run_autograder_writes_gradescope_results(tmp_path):
    """autograder/run_autograder in a Gradescope-like folder: the honest solution's Unit 3 (its
    pipeline task included) earns every point, one test per task; a submission of two files is
    one line and score 0."""
    root = tmp_path / "autograder"
    (root / "source").mkdir(parents=True)
    (root / "source" / "slimgpt").symlink_to(ROOT)
    (root / "source" / "UNIT").write_text("3\n")
    (root / "submission").mkdir()
    (root / "submission" / "mine.py").write_text(honest_source() + honest_course_source())
    env = dict(ENV, AUTOGRADER=str(root), PYTHON=sys.executable)
    script = ROOT / "autograder" / "run_autograder"
    subprocess.run([str(script)], check=True, env=env, timeout=300, capture_output=True)
    results = json.loads((root / "results" / "results.json").read_text())
    _check_gradescope(results)
    assert results["score"] == 50.0 and [t["max_score"] for t in results["tests"]] == [10, 10, 30]
    assert [t["name"] for t in results["tests"]] == ["Task 6: Incremental Pruning Ratio (Eq. 6)",
                                                     "Task 9: Unit 3 questions (ANSWERS 3.x)",
                                                     "Task 11: The layer-wise pipeline on a trained model (spec §6, Eq. 6)"]
    assert "isolation:" in results["output"]
    (root / "submission" / "other.py").write_text("")
    subprocess.run([str(script)], check=True, env=env, timeout=300, capture_output=True)
    results = json.loads((root / "results" / "results.json").read_text())
    assert results == {"score": 0.0, "output": "submit exactly one .py file (found 2)", "tests": []}


def test_gradescope_output_lists_failures_per_task(golden, tmp_path):
    out_json = tmp_path / "results.json"
    rc, out = _grade(SKELETON, golden, "--task", "1", "--task", "8", "--gradescope", str(out_json))
    assert rc == 1 and "score: 0.0 / 25 points (tasks 1, 8 only)" in out  # plain text stays on stdout
    results = json.loads(out_json.read_text())
    _check_gradescope(results)
    assert results["score"] == 0.0 and [t["max_score"] for t in results["tests"]] == [10, 15]
    assert "not implemented yet" in results["tests"][0]["output"]


@pytest.mark.parametrize("args, expected", [
    pytest.param(["no_such_file.py"], "no_such_file.py: no such file", id="missing_file"),
    pytest.param(["."], ".: is a directory (give the path to your .py file)", id="directory"),
    pytest.param([str(SKELETON), "--cases", "."], "not a usable oracle export", id="not_an_export"),
    pytest.param([str(SKELETON), "--cases", "no_such_dir"], "no_such_dir: no such directory", id="missing_dir"),
    pytest.param([str(SKELETON), "--task", "13"], "no task [13]", id="unknown_task"),
    pytest.param([str(SKELETON), "--unit", "5"], "no unit 5", id="unknown_unit"),
    pytest.param([str(SKELETON), "--hints", "4"], "--hints must be one of 0, 1, 2, 3", id="bad_hint_level"),
    pytest.param([str(SKELETON), "--gradescope", "no_dir/results.json"], "its folder does not exist",
                 id="gradescope_folder_missing"),
])
def test_bad_command_line_input_is_one_line(tmp_path, args, expected):
    proc = subprocess.run([sys.executable, str(GRADER), *args], capture_output=True, text=True, timeout=120,
                          env=ENV, cwd=tmp_path)
    assert proc.returncode == 2
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""


def test_additive_tripwire_on_the_factor_does_not_earn_the_cholesky_points(golden, tmp_path):
    """Explicit-inverse downdates plus a term that is 0 on a real call and moves when the factor
    is perturbed: the factor is computed and touches the output, but its values do not drive the
    result, so the probe's output is not the one the Cholesky form predicts."""
    wrong = _submission(tmp_path, "tripwire.py", """
        def prune_columns_cholesky(W, Hinv, columns, *, survivors=None):
            W = np.array(W, dtype=np.float64)
            G = np.array(Hinv, dtype=np.float64)
            S = np.asarray(columns, dtype=np.int64)
            K = np.setdiff1d(np.arange(W.shape[1]), S) if survivors is None else np.asarray(survivors, dtype=np.int64)
            order = np.concatenate([S, K])
            Gp = G[np.ix_(order, order)]
            Wn = W.copy()
            Wo = W[:, order].copy()
            Gd = Gp.copy()
            losses = []
            for i in range(S.size):
                losses.append(float(np.sum(Wo[:, i] ** 2) / Gd[i, i]))
                Wo = Wo - np.outer(Wo[:, i] / Gd[i, i], Gd[i, :])
                Gd = Gd - np.outer(Gd[:, i], Gd[i, :]) / Gd[i, i]
            Wn[:, order] = Wo
            U = np.linalg.cholesky(Gp)
            Wn[:, K] += U[0, 0] - np.sqrt(Gp[0, 0])
            Wn[:, S] = 0.0
            return Wn, np.array(losses)
    """)
    rc, out = _grade(wrong, golden, "--task", "2", "-v")
    assert rc == 1 and "XX Task 2" in out, out
    assert "FAIL prune_columns_cholesky.single\n" in out and "FAIL prune_columns.single\n" in out
    assert "values do not drive W_new" in out


def test_no_question_answer_is_printed_in_the_docs():
    """Each question's number must be computed: none of them appears, at 4 to 6 significant figures,
    in docs/, the README or tutorials/ (a table or an "at a glance" line would give it away)."""
    sys.path.insert(0, str(ASSIGNMENTS))
    try:
        import units
    finally:
        sys.path.remove(str(ASSIGNMENTS))
    files = [ROOT / "README.md"] + [p for d in ("docs", "tutorials") for p in (ROOT / d).rglob("*")
                                    if p.suffix in (".md", ".py", ".txt", ".json", ".html")]
    text = "\n".join(p.read_text(errors="ignore") for p in files)
    for q, f in units.QUESTIONS.items():
        value = float(f())
        assert value != round(value), f"question {q}: an integer answer is a lookup or plain arithmetic"
        for digits in (4, 5, 6):
            shown = f"{value:.{digits}g}"
            assert not re.search(rf"(?<![\d.]){re.escape(shown)}", text), f"question {q}: {shown} is printed"


def test_an_error_at_import_says_it_scored_0_and_points_to_answers(golden, tmp_path):
    """ANSWERS computed at import with one bug: nothing loads, and the message says why it is 0
    (an error at import, not only a loop) and where the numbers belong (answers())."""
    path = _submission(tmp_path, "eager.py", """
        ANSWERS = {"1.1": float(prune_columns(np.eye(3), np.eye(3), [7])[0, 0])}   # a bug: column 7 of 3
    """)
    rc, out = _grade(path, golden, "--task", "1")
    assert rc == 1 and "cannot load the submission: ValueError" in out, out
    assert "an error while importing scores 0 on every task" in out and "answers()" in out


def test_answers_function_is_called_lazily_and_its_error_stays_local():
    """answers() is called once, when the first question runs; its error is re-raised for each
    question rather than failing the import; the ANSWERS dict of earlier terms still works."""
    import types
    sys.path.insert(0, str(ASSIGNMENTS))
    try:
        import _runner
    finally:
        sys.path.remove(str(ASSIGNMENTS))
    calls = []
    good = types.SimpleNamespace(answers=lambda: calls.append(1) or {"1.1": 2.5})
    assert _runner._answers(good, {}) == {"1.1": 2.5}
    cache = {}
    bad = types.SimpleNamespace(answers=lambda: calls.append(1) or 1 / 0)
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            _runner._answers(bad, cache)
    assert len(calls) == 2  # once per module, however many questions
    assert _runner._answers(types.SimpleNamespace(ANSWERS={"3.1": 0.5}), {}) == {"3.1": 0.5}


def test_hints_name_the_lower_factor_and_no_false_off_by_one(golden, tmp_path):
    """U = L (the lower factor where the upper belongs) leaves the survivors uncompensated: the hint
    names the lower factor too. A DGS recurrence with a wrong divisor is not called an off-by-one."""
    lower = _submission(tmp_path, "lower.py", """
        def prune_columns_cholesky(W, Hinv, columns, *, survivors=None):
            W = np.array(W, dtype=np.float64)
            G = np.asarray(Hinv, dtype=np.float64)
            S = np.asarray(columns, dtype=np.int64)
            K = np.setdiff1d(np.arange(W.shape[1]), S) if survivors is None else np.asarray(survivors, dtype=np.int64)
            order = np.concatenate([S, K])
            U = np.linalg.cholesky(G[np.ix_(order, order)])   # the mistake: L, not L^T
            E = np.zeros((W.shape[0], S.size))
            for i in range(S.size):
                E[:, i] = W[:, S[i]] / U[i, i]
                W[:, S[i:]] -= np.outer(E[:, i], U[i, i:S.size])
            W[:, K] -= E @ U[:S.size, S.size:]
            W[:, S] = 0.0
            return W, np.sum(E ** 2, axis=0)
    """)
    divisor = _submission(tmp_path, "divisor.py", """
        def dgs_group_sizes(n_prune):
            sizes, b, left = [], (n_prune - 512) // 3, n_prune     # the mistake: // 3
            while left > 0:
                g = min(left, max(b, 64), 1024)
                sizes.append(g)
                left -= g
                b = (b - 512) // 3
            return sizes
    """)
    (rc1, out1), (rc2, out2) = _grade_many([(lower, golden, "--task", "2", "-v", "--hints", "1"),
                                            (divisor, golden, "--task", "5", "-v", "--hints", "1")])
    assert rc1 == 1 and "the lower Cholesky factor L used where the upper factor U belongs" in out1, out1
    assert rc2 == 1 and "FAIL dgs_group_sizes" in out2, out2
    assert "off-by-one" not in out2 and "differ from the schedule" in out2
    assert "group_sizes: yours differs from position 0 on (yours there: " in out2 and "expected [" not in out2


def test_messages_name_the_submissions_own_mistake(golden, tmp_path):
    """A syntax error points at the student's file and line (not importlib's frame); a call that
    runs out of time says it exceeded the limit, possibly by returning a very large result; NaN in
    a constructed input is the submission's, not a malformed report."""
    broken = tmp_path / "syntax.py"
    broken.write_text("import numpy as np\n\ndef hessian(X)\n    return X\n")
    slow = _submission(tmp_path, "slow.py", """
        def hessian(X):
            import time
            time.sleep(30)   # as long as handing back a result of many GB
    """)
    (rc1, out1), (rc2, out2) = _grade_many([(broken, golden, "--task", "1"),
                                            (slow, golden, "--task", "1", "--timeout", "2")])
    assert rc1 == 1 and "SyntaxError" in out1 and "(at syntax.py:3)" in out1 and "frozen" not in out1, out1
    assert "exceeded the time limit" in out2 and "very large result" in out2 and "endless loop?)" not in out2, out2
    sys.path.insert(0, str(ASSIGNMENTS))
    try:
        import units
    finally:
        sys.path.remove(str(ASSIGNMENTS))
    W = np.full((4, 8), np.nan)
    assert units.counterexample_problem(W, np.eye(8), 4) == "your W contains NaN or Inf: build finite inputs"


@pytest.mark.parametrize("answer", [np.array([1.0]), np.array([[1.0]]), np.array([1.0, 2.0])],
                         ids=["1d", "2d", "two"])
def test_an_array_answer_gets_one_message(tmp_path, answer):
    """However the array is shaped, a wrong answer given as an array says: give one number."""
    sys.path.insert(0, str(ASSIGNMENTS))
    try:
        import grade
    finally:
        sys.path.remove(str(ASSIGNMENTS))
    (tmp_path / "out").mkdir()
    np.savez(tmp_path / "out" / "k.npz", **{"out.value": answer})
    entry = {"id": "answers.q1.1", "operation": "answers", "tags": [],
             "outputs": [{"name": "value", "compare": "float", "tolerances": {"float64": {"rtol": 1e-4, "atol": 0.0}}}]}
    worker = {"problems": {}, "done": {"k": {"status": "returned"}}}
    res = grade._judge(entry, {"question": "1.1"}, {"value": np.array(7.5)}, worker, "k", tmp_path)
    assert res.status == oracle.FAIL and res.message == "give one number (a Python float), not an array"
