"""The golden-case oracle (slimgpt/oracle/): export, file format, check, failure messages, CLI."""
from __future__ import annotations

import json
import struct
import types

import numpy as np
import pytest

from slimgpt import oracle
from slimgpt import reference
from slimgpt import testing
from slimgpt.oracle.layers import expected_namespace

def _module(**functions):
    m = types.ModuleType("impl_under_test")
    for k, v in functions.items():
        setattr(m, k, v)
    return m


def _wrapping_reference(**overrides):
    """A module with every reference operation, some replaced."""
    fns = {op: getattr(reference, op) for op in oracle.SIGNATURES if hasattr(reference, op)}
    fns.update(overrides)
    return _module(**fns)


# --- export and format ------------------------------------------------------------------------

def test_every_reference_operation_has_cases(golden):
    index = json.loads((golden / "index.json").read_text())
    ops = {c["operation"] for c in index["cases"]}
    assert ops == set(oracle.OPERATIONS) and set(oracle.SIGNATURES) < ops
    assert len({c["id"] for c in index["cases"]}) == len(index["cases"])
    tags = {t for c in index["cases"] for t in c["tags"]}
    assert {"dead", "damping", "retry", "gqa", "gcd", "ablation", "schedule", "edge"} <= tags


def test_format_is_a_folder_of_plain_npy_per_case(golden):
    index = json.loads((golden / "index.json").read_text())
    assert index["format"] == "slimgpt-oracle" and index["version"] == oracle.FORMAT_VERSION
    for case in index["cases"]:
        folder = golden / case["folder"]
        assert json.loads((folder / "case.json").read_text()) == case
        assert {p.name for p in folder.iterdir()} == {"case.json", "arrays.txt"} | {
            a["file"] for a in case["arrays"].values()}
        manifest = [line.split() for line in (folder / "arrays.txt").read_text().splitlines()]
        assert {m[0]: {"file": m[1], "dtype": m[2], "offset": int(m[3]), "shape": [int(d) for d in m[5:]]}
                for m in manifest} == case["arrays"] and all(int(m[4]) == len(m) - 5 for m in manifest)
        for name, value in case["arguments"].items():
            if isinstance(value, dict) and set(value) == {"array"}:
                assert value["array"] in case["arrays"]
            elif isinstance(value, dict) and set(value) == {"arrays"}:
                assert set(value["arrays"].values()) <= set(case["arrays"])
            else:
                assert value is None or isinstance(value, (int, float, str, list, dict)), (case["id"], name)
        assert set(case["arguments"]) == set(oracle.OPERATIONS[case["operation"]].positional) | set(
            oracle.OPERATIONS[case["operation"]].keywords), case["id"]
        for out in case["outputs"]:
            assert out["key"] in case["arrays"]
            assert out["compare"] in ("float", "exact", "index_set", "index_sets")
            if out["compare"] == "float":
                for profile in case["profiles"]:
                    tol = out["tolerances"][profile]
                    assert tol["rtol"] > 0 and tol["atol"] > 0
        for key, rec in case["arrays"].items():
            raw = (folder / rec["file"]).read_bytes()
            assert rec["dtype"] in ("<f8", "<i8") and rec["offset"] % 64 == 0, (case["id"], key)
            assert len(raw) == rec["offset"] + 8 * int(np.prod(rec["shape"])), (case["id"], key)


def test_every_array_has_the_documented_dtype(golden):
    """docs/oracle.md: real arrays '<f8'; indices, counts and group sizes '<i8', even when empty."""
    integer_inputs = {"in.columns", "in.survivors", "in.token_ids"}
    for entry in json.loads((golden / "index.json").read_text())["cases"]:
        arrays = entry["arrays"]
        for key, rec in arrays.items():
            if key.startswith("in."):
                assert rec["dtype"] == ("<i8" if key in integer_inputs else "<f8"), (entry["id"], key)
        for o in entry["outputs"]:
            rec = arrays[o["key"]]
            assert rec["dtype"] == ("<f8" if o["compare"] == "float" else "<i8"), (entry["id"], o["name"])
            assert np.load(golden / entry["folder"] / rec["file"]).dtype.str == rec["dtype"]


def test_npy_files_parse_without_numpy(golden):
    """docs/oracle.md promises: version-1.0, little-endian, C-order .npy; data at case.json's offset."""
    import ast
    case = json.loads((golden / "cases" / "prune_heads.basic" / "case.json").read_text())
    rec = case["arrays"]["out.pruned_heads"]
    raw = (golden / case["folder"] / rec["file"]).read_bytes()
    assert raw[:8] == b"\x93NUMPY\x01\x00"
    (hlen,) = struct.unpack("<H", raw[8:10])
    assert 10 + hlen == rec["offset"] and raw[rec["offset"] - 1:rec["offset"]] == b"\n"
    header = ast.literal_eval(raw[10:10 + hlen].decode("latin1"))
    assert header == {"descr": "<i8", "fortran_order": False, "shape": tuple(rec["shape"])}
    values = struct.unpack(f"<{rec['shape'][0]}q", raw[rec["offset"]:])
    assert list(values) == np.load(golden / case["folder"] / rec["file"]).tolist()


def test_version_1_npz_exports_are_still_read(golden, tmp_path):
    """An export of format version 1 (one npz per case) checks as before."""
    index = json.loads((golden / "index.json").read_text())
    cases = [c for c in index["cases"] if c["operation"] == "dgs_group_sizes"]
    (tmp_path / "cases").mkdir()
    for c in cases:
        arrays = oracle.read_arrays(golden, c)
        for k in ("folder", "arrays", "defaults", "spec"):
            c.pop(k)
        c["file"] = f"cases/{c['id']}.npz"
        np.savez(tmp_path / c["file"], **arrays)
    (tmp_path / "index.json").write_text(json.dumps({**index, "version": 1, "cases": cases}))
    result = oracle.check(tmp_path, "slimgpt.reference")
    assert result.ok and result.passed == len(cases)


def test_cli_export_is_deterministic(golden, tmp_path):
    assert oracle.main(["export", str(tmp_path)]) == 0
    assert (tmp_path / "index.json").read_text() == (golden / "index.json").read_text()
    for case in json.loads((golden / "index.json").read_text())["cases"]:
        for a, b in zip(oracle.case_files(golden, case), oracle.case_files(tmp_path, case)):
            assert a.read_bytes() == b.read_bytes(), (case["id"], a.name)


def test_index_tolerances_come_from_the_one_table(golden):
    """Every float output's tolerance is a row of slimgpt.testing.TOLERANCES scaled by max|expected|:
    the case's own row for the float64 profile, the "float32" row for the float32 profile."""
    rows = {c.id: (c.tolerance, c.float32_tolerance) for c in oracle.build_cases()}
    for entry, args, expected in oracle.load_cases(golden):
        for out in (o for o in entry["outputs"] if o["compare"] == "float"):
            for profile, tol in out["tolerances"].items():
                row = rows[entry["id"]][0 if profile == "float64" else 1]
                floor = oracle.files.output_floor(entry["operation"], out["name"], args)
                rtol, atol = testing.tolerance(row, expected[out["name"]], floor)
                assert tol["rtol"] == rtol and tol["atol"] == pytest.approx(atol, rel=1e-12, abs=1e-300), entry["id"]


def test_schedule_cases_match_the_spec(golden):
    """Spec §4.2 / §10.2.4: the code's DGS schedule, not the paper's 1024 -> 8."""
    cases = {e["id"]: x for e, _, x in oracle.load_cases(golden)}
    assert cases["dgs_group_sizes.T688"]["group_sizes"].tolist() == [88] + [64] * 9 + [24]
    assert cases["dgs_group_sizes.T2752"]["group_sizes"].tolist() == [1024, 304] + [64] * 22 + [16]
    assert cases["dgs_group_sizes.T5504"]["group_sizes"].tolist() == [1024, 992, 240] + [64] * 50 + [48]
    assert cases["dgs_group_sizes.T40"]["group_sizes"].tolist() == [40]
    assert cases["dgs_group_sizes.T0"]["group_sizes"].tolist() == []
    assert np.mean(cases["ipr_ratios.log_32_p0625_p25"]["ratios"]) == pytest.approx(0.200387, abs=1e-6)


def test_gcd_case_separates_grouped_cholesky_from_summed_columns(golden):
    cases = {e["id"]: x for e, _, x in oracle.load_cases(golden)}
    with_gcd = set(cases["prune_heads.gcd_matters"]["pruned_heads"].tolist())
    without = set(cases["prune_heads.gcd_matters_no_gcd"]["pruned_heads"].tolist())
    assert 3 in without and 3 not in with_gcd


# --- check --------------------------------------------------------------------------------------

def test_reference_passes_every_case(golden):
    """Plumbing, not answers: the cases were exported from this same reference, so this proves the
    export, the file format, the loader and the checker round-trip; whether the expected outputs
    are right is shown by the reference's own invariant tests (tests/test_reference_*.py) and by
    the mutation tests below, which make the checker fail."""
    result = oracle.check(golden, expected_namespace(reference))
    assert result.ok, result.table()
    assert result.passed == len(result.cases), result.table()
    assert not any(c.warnings for c in result.cases)


def test_float32_profile_accepts_float32_rounding(golden):
    """An implementation whose inputs and outputs are rounded to float32 passes the float32
    profile (and the selections do not flip: the cases have well-separated saliencies)."""
    def f32(fn):
        def g(*args, **kw):
            args = [a.astype(np.float32).astype(np.float64) if isinstance(a, np.ndarray) and a.dtype.kind == "f"
                    else a for a in args]
            out = fn(*args, **kw)
            cast = (lambda x: x.astype(np.float32) if isinstance(x, np.ndarray) and x.dtype.kind == "f" else x)
            return tuple(cast(o) for o in out) if isinstance(out, tuple) else cast(out)
        return g
    ops = ["hessian", "prune_columns", "head_errors", "prune_heads", "prune_channels", "reconstruction_error"]
    impl = _module(**{op: f32(getattr(reference, op)) for op in ops})
    result = oracle.check(golden, impl, profile="float32", skip_tags=["large"])
    assert result.ok, result.table()
    assert result.count(oracle.SKIPPED) > 0  # the float64-only damping-retry cases


def test_skeleton_checks_nothing_and_is_not_ok(golden):
    def todo(*a, **k):
        raise NotImplementedError("TODO")
    result = oracle.check(golden, _module(**{op: todo for op in oracle.SIGNATURES}))
    assert result.passed == 0 and result.failed == 0 and not result.ok
    assert result.count(oracle.NOT_IMPLEMENTED) == len(result.cases)
    assert "no case was checked" in result.table()
    assert not oracle.check(golden, _module()).ok


def test_summed_single_column_head_errors_fail_with_a_useful_message(golden):
    def summed(W, Hinv, head_dim, *, gcd=True):
        return reference.head_errors(W, Hinv, head_dim, gcd=False)
    result = oracle.check(golden, _wrapping_reference(head_errors=summed), operations=["head_errors"])
    failed = {c.id: c for c in result.cases if c.status == oracle.FAIL}
    assert "head_errors.basic" in failed and "head_errors.correlated_head" in failed
    assert "head_errors.no_gcd" not in failed and "head_errors.head_dim_1" not in failed
    msg = failed["head_errors.correlated_head"].message
    assert "errors:" in msg and "max abs err" in msg and "allowed" in msg and "worst at (3,)" in msg


def test_no_compensation_fails_with_a_useful_message(golden):
    def no_comp(W, H, columns, *, percdamp=0.0, compensate=True):
        return reference.prune_columns(W, H, columns, percdamp=percdamp, compensate=False)
    result = oracle.check(golden, _wrapping_reference(prune_columns=no_comp), operations=["prune_columns"])
    status = {c.id: c for c in result.cases}
    assert status["prune_columns.set_unsorted"].status == oracle.FAIL
    assert "W_new" in status["prune_columns.set_unsorted"].message
    assert status["prune_columns.no_compensate"].status == oracle.PASS
    assert status["prune_columns.empty"].status == oracle.PASS


def test_wrong_indices_are_named(golden):
    def wrong(W, H, n_prune, head_dim, **kw):
        W_new, heads = reference.prune_heads(W, H, n_prune, head_dim, **kw)
        heads = np.asarray(heads).copy()
        if len(heads):
            heads[-1] = (heads[-1] + 1) % (W.shape[1] // head_dim)
        return W_new, heads
    result = oracle.check(golden, _wrapping_reference(prune_heads=wrong), operations=["prune_heads"])
    case = next(c for c in result.cases if c.id == "prune_heads.basic")
    assert case.status == oracle.FAIL
    assert "pruned_heads" in case.message and "missing" in case.message and "unexpected" in case.message


def test_exceptions_are_failures_and_expected_errors_pass(golden):
    def boom(*a, **k):
        raise ValueError("shape mismatch in my code")
    result = oracle.check(golden, _wrapping_reference(dgs_group_sizes=boom), operations=["dgs_group_sizes"])
    case = next(c for c in result.cases if c.id == "dgs_group_sizes.T688")
    assert case.status == oracle.FAIL and "ValueError: shape mismatch in my code" in case.message
    index = json.loads((golden / "index.json").read_text())
    raising = {c["id"]: c["raises"] for c in index["cases"] if "raises" in c}
    assert raising == {"prune_columns.not_positive_definite": "NotPositiveDefiniteError",
                       "ipr_ratios.first_above_last": "ValueError", "ipr_for_target.unreachable": "ValueError",
                       "ipr_for_target.last_exactly_1": "ValueError", "ipr_for_target.uniform_other_first": "ValueError",
                       "prune_heads.gqa_indivisible": "ValueError"}
    kinds = {c["id"]: c["error_kind"] for c in index["cases"] if "raises" in c}
    assert set(kinds.values()) == {"not_positive_definite", "invalid_argument"}

    def returns(W, H, columns, **kw):
        return np.zeros_like(W)
    result = oracle.check(golden, _wrapping_reference(prune_columns=returns), operations=["prune_columns"])
    case = next(c for c in result.cases if c.id == "prune_columns.not_positive_definite")
    assert case.status == oracle.FAIL and "expected an error of kind not_positive_definite" in case.message


def test_impl_from_a_python_file(golden, tmp_path):
    path = tmp_path / "my_impl.py"
    path.write_text("from slimgpt.reference import dgs_group_sizes, ipr_ratios\n")
    result = oracle.check(golden, str(path))
    assert result.ok
    assert set(result.by_operation()["ipr_ratios"].keys()) >= {oracle.PASS}
    assert result.count(oracle.NOT_IMPLEMENTED) > 0


def test_cli_exit_codes(golden, tmp_path, capsys):
    assert oracle.main(["check", str(golden), "--impl", "slimgpt.reference", "--skip-tag", "large"]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out
    empty = tmp_path / "empty_impl.py"
    empty.write_text("")
    assert oracle.main(["check", str(golden), "--impl", str(empty)]) == 1
    assert "no case was checked" in capsys.readouterr().out


def test_cpp_core_passes_the_float32_profile(golden):
    result = oracle.check(golden, "slimgpt.ops", profile="float32", backend="cpu", skip_tags=["large"])
    assert result.ok, result.table()


def test_slimgpt_cli_subcommand(golden, capsys):
    from slimgpt import cli
    assert cli.main(["oracle", "check", str(golden), "--impl", "slimgpt.reference", "--op", "dgs_group_sizes"]) == 0
    out = capsys.readouterr().out
    assert "11 passed, 0 failed" in out
