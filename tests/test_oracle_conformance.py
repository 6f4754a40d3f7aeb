"""The oracle as a conformance suite: tags and profiles, adapters (maps, template), adapter
diagnostics, the planted bugs, the C and JavaScript readers, bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from slimgpt import oracle
from slimgpt import reference
from slimgpt.oracle.layers import expected_namespace
from slimgpt.oracle.mutations import PLANTED, run_mutation

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "oracle"


def _module(**functions):
    m = types.ModuleType("impl_under_test")
    for k, v in functions.items():
        setattr(m, k, v)
    return m


def _statuses(result):
    return {c.id: c.status for c in result.cases}


# --- the index: tags, defaults, profiles ------------------------------------------------------

def test_every_case_has_provenance_and_the_retry_cases_are_project(golden):
    index = json.loads((golden / "index.json").read_text())
    for c in index["cases"]:
        assert set(c["tags"]) & set(oracle.PROVENANCE), c["id"]
        assert c["description"], c["id"]
    retry = {c["id"] for c in index["cases"] if "retry" in c["tags"]}
    assert retry == {"prune_columns.damping_retry", "prune_columns_naive.damping_retry", "prune_heads.damping_retry"}
    assert all("project" in c["tags"] and "published-code" not in c["tags"]
               for c in index["cases"] if c["id"] in retry)
    assert {"paper", "published-code", "project", "edge"} <= {t for c in index["cases"] for t in c["tags"]}


def test_defaults_are_filled_in(golden):
    case = json.loads((golden / "cases" / "prune_channels.dgs" / "case.json").read_text())
    assert case["arguments"]["percdamp"] == 0.0 and case["arguments"]["group_sizes"] is None
    assert case["arguments"]["compensate"] is True
    assert set(case["defaults"]) == {"percdamp", "group_sizes", "compensate"}


def test_an_implementation_default_cannot_leak(golden):
    """A shim whose own percdamp default is 0.01 still gets the case's 0 (it is passed explicitly)."""
    def prune_channels(W, H, n_prune, *, percdamp=0.01, group_sizes=None, compensate=True):
        return reference.prune_channels(W, H, n_prune, percdamp=percdamp, group_sizes=group_sizes,
                                        compensate=compensate)
    result = oracle.check(golden, _module(prune_channels=prune_channels), skip_tags=["large"])
    assert result.ok, result.table()


def test_without_the_retry_passes_by_skipping_project(golden):
    """A paper-faithful implementation (no damping retry) fails the retry cases, passes without them."""
    def no_retry(fn):
        def g(*args, **kw):
            with np.errstate(all="raise"):
                import warnings
                with warnings.catch_warnings():
                    warnings.simplefilter("error", reference.DampingWarning)
                    try:
                        return fn(*args, **kw)
                    except reference.DampingWarning:
                        raise np.linalg.LinAlgError("not positive definite") from None
        return g
    ops = ["prune_columns", "prune_columns_naive", "prune_heads"]
    impl = _module(**{op: no_retry(getattr(reference, op)) for op in ops},
                   ORACLE_MAP={"errors": {"numpy.linalg.LinAlgError": "not_positive_definite"}})
    full = oracle.check(golden, impl, operations=ops)
    assert {c.id for c in full.cases if c.status == oracle.FAIL} == {
        "prune_columns.damping_retry", "prune_columns_naive.damping_retry", "prune_heads.damping_retry"}
    assert _statuses(full)["prune_columns.not_positive_definite"] == oracle.PASS  # mapped LinAlgError
    assert oracle.check(golden, impl, operations=ops, skip_tags=["project"]).ok
    published = oracle.check(golden, impl, operations=ops, profile="published-code")
    assert published.ok and all(c.status == oracle.SKIPPED for c in published.cases if "retry" in c.id)


def test_tag_filters(golden):
    result = oracle.check(golden, "slimgpt.reference", tags=["gqa"], skip_tags=["layer"])
    assert result.ok and {c.id for c in result.cases if c.status == oracle.PASS} == {
        "prune_heads.whole_group_blocks", "prune_heads.gqa_quota", "prune_heads.gqa_quota_2",
        "prune_heads.gqa_group_ids", "prune_heads.gqa_uneven_groups", "prune_heads.gqa_indivisible"}


# --- adapters ---------------------------------------------------------------------------------

def test_maps_replace_wrappers(golden, tmp_path):
    """An implementation with its own names, argument order, return order and error class,
    described by ORACLE_MAP only."""
    path = tmp_path / "mine.py"
    path.write_text('''
import numpy as np
from slimgpt import reference as R

class Singular(Exception):
    pass

def heads(weight, hess, head_size, count, damping=0.0):
    try:
        W, idx = R.prune_heads(weight, hess, count, head_size, percdamp=damping)
    except R.NotPositiveDefiniteError:
        raise Singular()
    return idx, W

def columns(hess, weight, cols, damping=0.0, compensate=True):
    try:
        return R.prune_columns(weight, hess, cols, percdamp=damping, compensate=compensate)
    except R.NotPositiveDefiniteError:
        raise Singular()

ORACLE_MAP = {
    "operations": {"prune_heads": "heads", "prune_columns": columns},
    "arguments": {"prune_heads": {"W": "weight", "H": "hess", "n_prune": "count", "head_dim": "head_size",
                                  "percdamp": "damping", "gcd": None, "compensate": None, "head_groups": None},
                  "prune_columns": {"W": "weight", "H": "hess", "columns": "cols", "percdamp": "damping"}},
    "positional": {"prune_heads": ["weight", "hess", "head_size", "count"],
                   "prune_columns": ["hess", "weight", "cols"]},
    "outputs": {"prune_heads": ["pruned_heads", "W_new"]},
    "errors": {Singular: "not_positive_definite"},
}
''')
    result = oracle.check(golden, str(path), operations=["prune_heads", "prune_columns"])
    assert result.ok and result.count(oracle.ADAPTER) == 0, result.table()
    status = _statuses(result)
    assert status["prune_columns.not_positive_definite"] == oracle.PASS
    assert status["prune_heads.no_gcd"] == oracle.NOT_IMPLEMENTED  # gcd=False: the map says unsupported
    assert status["prune_heads.basic"] == oracle.PASS


def test_error_names_resolve_in_the_module_as_the_user_wrote_it(golden, tmp_path):
    """my_slimgpt.py is imported as _oracle_impl_my_slimgpt: "my_slimgpt.HessianNotPD" still names
    its class; a key that names no class is an adapter warning."""
    path = tmp_path / "my_slimgpt.py"
    path.write_text('''
from slimgpt import reference as R

class HessianNotPD(Exception):
    pass

def prune_columns(W, H, columns, **kw):
    try:
        return R.prune_columns(W, H, columns, **kw)
    except R.NotPositiveDefiniteError:
        raise HessianNotPD()

ORACLE_MAP = {"errors": {"my_slimgpt.HessianNotPD": "not_positive_definite",
                         "my_slimgpt.NoSuchError": "invalid_argument"}}
''')
    result = oracle.check(golden, str(path), case_ids=["prune_columns.not_positive_definite"])
    assert _statuses(result) == {"prune_columns.not_positive_definite": oracle.PASS}, result.table()
    assert len(result.problems) == 1 and "'my_slimgpt.NoSuchError' matches no exception class" in result.problems[0]
    assert "my_slimgpt.NoSuchError" in result.table()


def test_check_result_subclasses_keep_adding_positional_fields():
    """The course grader's GradeResult(impl, profile, cases, load_error): the map's problems are
    keyword-only, so they cannot take its fourth positional argument."""
    import dataclasses

    @dataclasses.dataclass
    class Graded(oracle.CheckResult):
        load_error: str = ""
    graded = Graded("impl", "float64", [], "did not load")
    assert graded.load_error == "did not load" and graded.problems == []


def test_template_round_trip(golden, tmp_path):
    """The reference dressed as the template (each stub's body replaced by a call with all its
    parameters) passes every case: the template's signatures are the oracle's."""
    assert oracle.main(["template", "--out", str(tmp_path / "stubs.py")]) == 0
    assert oracle.main(["template", "--out", str(tmp_path / "stubs.py"), "--force"]) == 0  # its own: replaced
    stubs = (tmp_path / "stubs.py").read_text()
    assert oracle.check(golden, str(tmp_path / "stubs.py")).count(oracle.NOT_IMPLEMENTED) == len(
        oracle.build_cases())
    dressed = "from slimgpt import reference as _R\nfrom slimgpt.oracle.layers import expected_namespace as _E\n" \
              "_X = _E(_R)\n" + stubs
    for op, o in oracle.OPERATIONS.items():
        params = ", ".join(o.positional + [f"{k}={k}" for k in o.keywords])
        dressed = dressed.replace(f'raise NotImplementedError("{op}")', f"return _X.{op}({params})")
    (tmp_path / "dressed.py").write_text(dressed)
    result = oracle.check(golden, str(tmp_path / "dressed.py"))
    assert result.passed == len(result.cases), result.table()
    for op, o in oracle.OPERATIONS.items():
        assert f"docs/spec.md {o.spec}" in stubs and f"def {op}(" in stubs


def test_torch_example_checks_through_its_map(golden, one_torch_thread):
    pytest.importorskip("torch")
    result = oracle.check(golden, str(EXAMPLES / "torch_slimgpt.py"), skip_tags=["project", "large"])
    assert result.ok and result.count(oracle.ADAPTER) == 0, result.table()
    assert result.passed >= 60


PUBLISHED_STANDIN = """
import math
import torch
from slimgpt.reference import prune_channels, prune_heads

class SlimGPT:
    def __init__(self, layer):
        self.layer, self.nsamples = layer, 0
        self.H = torch.zeros(layer.weight.shape[1], layer.weight.shape[1])

    def add_batch(self, inp, out):
        tmp = inp.shape[0]
        inp = inp.reshape(-1, inp.shape[-1]).t().float()
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp
        self.H += inp @ inp.t()

    def struct_prune(self, n_prune, head_dim=1, percdamp=0.01):
        W, H = self.layer.weight.data.double().numpy(), self.H.double().numpy()
        if head_dim > 1:
            W, _ = prune_heads(W, H, n_prune, head_dim, percdamp=percdamp)
        else:
            W, _ = prune_channels(W, H, n_prune, percdamp=percdamp)
        self.layer.weight.data = torch.tensor(W, dtype=torch.float32)
"""


def test_published_class_adapter(golden, tmp_path, monkeypatch, one_torch_thread):
    """The adapter for the authors' class, run on a stand-in with the class's shape (a layer
    object fed with add_batch, pruned in place), imported from a path the user gives."""
    pytest.importorskip("torch")
    release = tmp_path / "release" / "slim_utils"
    release.mkdir(parents=True)
    (release / "__init__.py").write_text("")
    (release / "slimgpt.py").write_text(PUBLISHED_STANDIN)
    monkeypatch.setenv("SLIMGPT_PUBLISHED", str(tmp_path / "release"))
    result = oracle.check(golden, str(EXAMPLES / "published_slimgpt.py"), profile="published-code",
                          operations=["prune_attention_layer", "prune_ffn_layer"])
    assert result.ok, result.table()
    monkeypatch.setenv("SLIMGPT_PUBLISHED", str(tmp_path / "nowhere"))
    with pytest.raises(oracle.ImplementationError, match="SLIMGPT_PUBLISHED"):
        oracle.check(golden, str(EXAMPLES / "published_slimgpt.py"))


# --- diagnostics --------------------------------------------------------------------------------

def test_adapter_problems_are_reported_apart_from_numbers(golden, capsys):
    def missing_keyword(W, Hinv, head_dim):           # no gcd: fine at the default, a mismatch at gcd=False
        return reference.head_errors(W, Hinv, head_dim)

    def three_results(W, H, n_prune, head_dim, **kw):
        return (*reference.prune_heads(W, H, n_prune, head_dim, **kw), 0.0)

    def mask(W, H, n_prune, **kw):
        W_new, idx = reference.prune_channels(W, H, n_prune, **kw)
        m = np.zeros(W.shape[1], dtype=bool)
        m[idx] = True
        return W_new, m

    def strict(n_layers, first, last):                 # no strategy parameter at all, no **kw
        return reference.ipr_ratios(n_layers, first, last)

    impl = _module(head_errors=missing_keyword, prune_heads=three_results, prune_channels=mask, ipr_ratios=strict)
    result = oracle.check(golden, impl, skip_tags=["large"])
    status = {c.id: c for c in result.cases}
    assert status["head_errors.basic"].status == oracle.PASS
    assert status["head_errors.no_gcd"].status == oracle.ADAPTER
    assert "signature mismatch" in status["head_errors.no_gcd"].message and "gcd=False" in \
        status["head_errors.no_gcd"].message
    assert status["prune_heads.basic"].status == oracle.ADAPTER and "got 3" in status["prune_heads.basic"].message
    assert status["prune_channels.dgs"].status == oracle.ADAPTER and "boolean mask" in \
        status["prune_channels.dgs"].message
    assert status["ipr_ratios.linear_32_p0625_p25"].status == oracle.ADAPTER
    assert result.failed == 0 and not result.ok
    table = result.table()
    assert "adapter problems" in table and "0 failed" in table
    # one line for the operation whose every case has the same problem
    section = table[table.index("adapter problems ("):]
    n_heads = sum(c.operation == "prune_heads" and c.status == oracle.ADAPTER for c in result.cases)
    assert n_heads > 10 and section.count("prune_heads, ") == 1 and f"prune_heads, {n_heads} cases (basic, " in section


def test_floats_where_integers_are_expected_are_adapter_problems(golden):
    """Group sizes and pruned indices as float64 (integer-valued): an adapter problem, not a pass;
    an empty list for T = 0 still passes."""
    def float_sizes(n_prune):
        return np.asarray(reference.dgs_group_sizes(n_prune), dtype=np.float64)

    def float_heads(W, H, n_prune, head_dim, **kw):
        W_new, heads = reference.prune_heads(W, H, n_prune, head_dim, **kw)
        return W_new, heads.astype(np.float64)
    result = oracle.check(golden, {"dgs_group_sizes": float_sizes, "prune_heads": float_heads},
                          case_ids=["dgs_group_sizes.T100", "dgs_group_sizes.T0", "prune_heads.basic"])
    status = {c.id: c for c in result.cases}
    assert status["dgs_group_sizes.T0"].status == oracle.PASS
    for case in ("dgs_group_sizes.T100", "prune_heads.basic"):
        assert status[case].status == oracle.ADAPTER and "float64 values; return integers" in status[case].message


def test_an_implementation_that_writes_into_its_inputs_is_warned(golden):
    """prune_columns zeroing the caller's W in place: a warning naming W, on a torch map too."""
    def in_place(W, H, columns, **kw):
        W_new = reference.prune_columns(W, H, columns, **kw)
        W[:, columns] = 0.0
        return W_new

    def torch_in_place(weight, H, columns, **kw):
        weight[:, columns] = 0.0
        return reference.prune_columns(weight.numpy(), H.numpy(), columns.numpy(), **kw)
    torch_impl = _module(prune_columns=torch_in_place)
    torch_impl.ORACLE_MAP = {"arguments": {"prune_columns": {"W": "weight"}}, "inputs": "torch"}
    for impl, name in (({"prune_columns": in_place}, "W"), (torch_impl, "weight")):
        case = oracle.check(golden, impl, case_ids=["prune_columns.single"]).cases[0]
        assert any(w.startswith(f"modified input {name}:") for w in case.warnings), case.warnings
    clean = oracle.check(golden, {"prune_columns": reference.prune_columns}, case_ids=["prune_columns.single"])
    assert clean.cases[0].warnings == []


def test_unexpected_keyword_from_a_builtin_is_an_adapter_problem(golden):
    class NoSignature:                              # a callable whose signature cannot be inspected
        __signature__ = property(lambda self: (_ for _ in ()).throw(ValueError()))

        def __call__(self, n_prune):
            return reference.dgs_group_sizes(n_prune)
    result = oracle.check(golden, {"dgs_group_sizes": NoSignature()}, operations=["dgs_group_sizes"], backend="cpu")
    assert {c.status for c in result.cases} == {oracle.ADAPTER}
    assert "unexpected keyword argument 'backend'" in result.cases[0].message


def test_failures_print_the_description_and_debug_the_traceback(golden):
    def broken(n_prune):
        return _helper(n_prune)

    def _helper(n):
        raise RuntimeError(f"index {n} out of range in my code")
    result = oracle.check(golden, {"dgs_group_sizes": broken}, operations=["dgs_group_sizes"], debug=True)
    case = next(c for c in result.cases if c.id == "dgs_group_sizes.T688")
    assert case.status == oracle.FAIL and "at test_oracle_conformance.py" in case.message
    assert "Traceback" in case.message and "_helper" in case.message and "slimgpt/oracle" not in case.message
    assert "case: DGS schedule for T=688" in result.table()


def test_float32_results_warn_in_the_float64_profile(golden):
    def f32(X):
        return reference.hessian(X).astype(np.float32)
    result = oracle.check(golden, {"hessian": f32}, operations=["hessian"])
    assert all(c.warnings and "float32" in c.warnings[0] for c in result.cases if c.status != oracle.SKIPPED)
    assert "warning: H is float32" in result.table()


def test_all_zero_outputs_get_a_floor_and_removed_columns_must_be_exact_zeros(golden):
    """prune_heads.all expects W_new = 0: rounding-level noise passes (the floor is max|W|'s), but
    removed columns are an exact assertion, so 1e-15 of dust fails with its own message."""
    entry = json.loads((golden / "cases" / "prune_heads.all" / "case.json").read_text())
    assert entry["outputs"][0]["tolerances"]["float64"]["atol"] > 0

    def noisy(W, H, n_prune, head_dim, **kw):
        W_new, heads = reference.prune_heads(W, H, n_prune, head_dim, **kw)
        return W_new + 1e-15, heads
    result = oracle.check(golden, {"prune_heads": noisy}, case_ids=["prune_heads.all", "prune_heads.basic"])
    for c in result.cases:
        assert c.status == oracle.FAIL and "must be exactly 0.0" in c.message and "out of tolerance" not in c.message


def test_an_all_zero_expected_output_has_no_relative_error(golden):
    """prune_heads.all expects W_new = 0: a wrong W_new is reported by its absolute error, never
    as 'max rel err inf'."""
    def ones(W, H, n_prune, head_dim, **kw):
        W_new, heads = reference.prune_heads(W, H, n_prune, head_dim, **kw)
        return W_new + 1.0, heads
    result = oracle.check(golden, {"prune_heads": ones}, case_ids=["prune_heads.all"])
    case = result.cases[0]
    assert case.status == oracle.FAIL and "expected all 0.0" in case.message and case.max_abs_err == 1.0
    assert "inf" not in case.message and "inf" not in result.table()


def test_a_wrong_selection_is_reported_first(golden):
    """A channel swapped for another: the index-set difference comes first, then the weights, whose
    exact-zero check names the columns the reference removed (§2.1), or a dead input (§2.4)."""
    def swapped(W, H, n_prune, **kw):
        _, idx = reference.prune_channels(W, H, n_prune, **kw)
        idx = np.append(idx[1:], next(c for c in range(W.shape[1]) if c not in idx))
        return reference.prune_columns(W, H, idx, percdamp=kw.get("percdamp", 0.0)), idx

    def dead_kept(W, H, columns, **kw):
        W_new = reference.prune_columns(W, H, columns, **kw)
        W_new[:, 7] = W[:, 7]
        return W_new
    result = oracle.check(golden, {"prune_channels": swapped, "prune_columns": dead_kept},
                          case_ids=["prune_channels.dead_damped", "prune_columns.dead_kept"])
    msg = {c.id: c.message.splitlines() for c in result.cases}
    channels = msg["prune_channels.dead_damped"]
    assert channels[0].startswith("pruned_channels:") and "missing" in channels[0]
    assert any("W_new: columns the reference removed must be exactly 0.0" in m and "§2.1" in m for m in channels)
    assert any("W_new: dead inputs" in m and "[7]" in m and "§2.4" in m for m in msg["prune_columns.dead_kept"])


def test_index_set_messages_are_short(golden):
    """dgs_full_schedule selects 660 channels: a shifted selection is named by what is missing and
    unexpected, capped like the other lists, not by the two full sets."""
    def shifted(W, H, n_prune, **kw):
        W_new, idx = reference.prune_channels(W, H, n_prune, **kw)
        return W_new, (idx + 1) % W.shape[1]
    result = oracle.check(golden, {"prune_channels": shifted}, case_ids=["prune_channels.dgs_full_schedule"])
    first = result.cases[0].message.splitlines()[0]
    assert first.startswith("pruned_channels:") and "missing" in first and "unexpected" in first
    assert len(first) < 300, first


def test_model_trace_names_the_layer_that_differs(golden):
    """prune_model.tiny_llama: a whole-pipeline implementation whose third layer keeps a different
    head fails on pruned_heads[2]; weights digests out of tolerance are named too."""
    folder = golden / "cases" / "prune_model.tiny_llama"
    heads, channels, traces, norms = (np.load(folder / f"out.{n}.npy") for n in
                                      ("pruned_heads", "pruned_channels", "hessian_traces", "weight_norms"))
    entry = json.loads((folder / "case.json").read_text())
    assert entry["arguments"]["weights"]["arrays"]["model.layers.0.self_attn.o_proj.weight"] == \
        "in.weights.model.layers.0.self_attn.o_proj.weight"

    def wrong_head(weights, config, token_ids, ratio, *, percdamp=0.01):
        assert config["num_hidden_layers"] == 4 and token_ids.shape == (4, 32) and len(weights) == 39
        h = heads.copy()
        h[2, 0] = next(j for j in range(8) if j not in h[2])
        return h, channels, traces, norms * 1.01
    result = oracle.check(golden, {"prune_model": wrong_head}, tags=["model"])
    msg = result.cases[0].message
    assert result.cases[0].status == oracle.FAIL and "pruned_heads[2]" in msg and "weight_norms" in msg

    def two_layers_wrong(weights, config, token_ids, ratio, *, percdamp=0.01):
        c = channels.copy()
        for layer in (3, 1):
            c[layer, 0] = next(j for j in range(config["intermediate_size"]) if j not in c[layer])
        return heads, c, traces, norms
    msg = oracle.check(golden, {"prune_model": two_layers_wrong}, tags=["model"]).cases[0].message.splitlines()
    assert "2 of 4 rows (layers) differ, the first diverging is 1" in msg[0]
    assert msg[1].startswith("pruned_channels[1]") and msg[2].startswith("pruned_channels[3]")


# --- the planted bugs -----------------------------------------------------------------------------

@pytest.mark.parametrize("mutation", PLANTED, ids=[m.name for m in PLANTED])
def test_planted_bug_is_caught(golden, mutation):
    statuses = run_mutation(mutation, golden)
    assert statuses and all(s == oracle.FAIL for s in statuses.values()), statuses


def test_planted_bugs_are_documented():
    doc = (ROOT / "docs" / "oracle.md").read_text()
    assert len(PLANTED) >= 9
    for m in PLANTED:
        assert f"`{m.name}`" in doc and all(f"`{c}`" in doc for c in m.catches), m.name


# --- readers in other languages ----------------------------------------------------------------

READER_OPS = {"hessian", "accumulate_hessian", "dgs_group_sizes", "ipr_ratios", "reconstruction_error"}


def _reader_ids(golden):
    return {c.id for c in oracle.build_cases() if c.operation in READER_OPS}


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
def test_c_reader(golden, tmp_path):
    exe = tmp_path / "reader"
    subprocess.run(["gcc", "-O2", "-std=c99", "-Wall", "-Werror", "-o", str(exe), str(EXAMPLES / "reader.c"), "-lm"],
                   check=True)
    proc = subprocess.run([str(exe), str(golden)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {line.split()[1] for line in proc.stdout.splitlines() if line.startswith("pass ")} == _reader_ids(golden)
    assert subprocess.run([str(exe), str(tmp_path)], capture_output=True).returncode == 2
    # JSON whitespace is not part of the format: the same cases with compact case.json files
    for case in _reader_ids(golden):
        shutil.copytree(golden / "cases" / case, tmp_path / "compact" / "cases" / case)
        path = tmp_path / "compact" / "cases" / case / "case.json"
        path.write_text(json.dumps(json.loads(path.read_text()), separators=(",", ":")))
    proc = subprocess.run([str(exe), str(tmp_path / "compact")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and f"{len(_reader_ids(golden))} passed" in proc.stdout, proc.stdout


@pytest.mark.skipif(shutil.which("node") is None, reason="no node")
def test_js_reader(golden, tmp_path):
    proc = subprocess.run(["node", str(EXAMPLES / "reader.js"), str(golden)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {line.split()[1] for line in proc.stdout.splitlines() if line.startswith("pass ")} == _reader_ids(golden)
    assert subprocess.run(["node", str(EXAMPLES / "reader.js"), str(tmp_path)], capture_output=True).returncode == 2


# --- bad input ------------------------------------------------------------------------------------

def test_a_damaged_case_fails_alone(golden, tmp_path):
    """One truncated .npy: filtered out, it is never read; selected, it is that case's failure and
    the other cases are still checked."""
    damaged = tmp_path / "golden"
    shutil.copytree(golden, damaged)
    (damaged / "cases" / "hessian.basic" / "in.X.npy").write_bytes(b"\x93NUMPY")
    assert oracle.check(damaged, reference, operations=["dgs_group_sizes"]).ok
    status = {c.id: c for c in oracle.check(damaged, reference, operations=["hessian"]).cases}
    assert status["hessian.basic"].status == oracle.FAIL and "damaged" in status["hessian.basic"].message
    assert status["hessian.one_token"].status == oracle.PASS


@pytest.mark.parametrize("argv, message", [
    (["check", "{tmp}", "--impl", "slimgpt.reference"], "is not an oracle export"),
    (["check", "{tmp}/missing", "--impl", "slimgpt.reference"], "no such directory"),
    (["check", "{golden}/index.json", "--impl", "slimgpt.reference"], "is a file, not an export folder"),
    (["check", "{golden}", "--impl", "no_such_module_xyz"], "cannot load the implementation"),
    (["check", "{golden}", "--impl", "slimgpt.reference", "--tag", "nonsense"], "unknown tag(s) nonsense"),
    (["check", "{golden}", "--impl", "slimgpt.reference", "--op", "nonsense"], "unknown operation(s) nonsense"),
    (["check", "{golden}", "--impl", "slimgpt.reference", "--profile", "nosuch"], "profile must be one of"),
    (["check", "{golden}", "--impl", "slimgpt.reference", "--op", "hessian", "--tag", "gqa"],
     "the filters (--op hessian, --tag gqa) match no case"),
    (["template", "--out", "{golden}/index.json"], "a Python module"),
    (["template", "--out", "{tmp}/nodir/x.py"], "the parent folder of the output does not exist"),
    (["export", "{tmp}/a/b/c"], "the parent folder of the output does not exist"),
    (["template", "--out", "{tmp}/typo.py", "--force"], "was not written by slimgpt"),
    (["check", "{golden}", "--impl", "{tmp}/typo.py"], "ORACLE_MAP arguments of hessian name ['Y']"),
    (["check", "{golden}", "--impl", "{tmp}/gone.py"], "sends hessian to 'gram', which the module lacks"),
])
def test_bad_input_is_one_line_and_exit_2(golden, tmp_path, argv, message):
    (tmp_path / "typo.py").write_text('ORACLE_MAP = {"arguments": {"hessian": {"Y": "inputs"}}}\n')
    (tmp_path / "gone.py").write_text('ORACLE_MAP = {"operations": {"hessian": "gram"}}\n')
    argv = [a.format(tmp=tmp_path, golden=golden) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "slimgpt.oracle", *argv], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
