"""Golden cases for the SlimGPT operations: export them from the reference, check any implementation.

A language-neutral conformance suite. `export(dir)` runs the NumPy float64 reference
(`slimgpt.reference`) on a fixed, seeded table of named, tagged cases and writes one folder per
case (plain .npy files and a case.json with every argument, default, tolerance and tag) plus an
`index.json`; `check(dir, impl)` runs another implementation, in its own shape through an
ORACLE_MAP, over the same cases and reports, per case, pass / fail / adapter problem with max
abs/rel errors. The file format is in docs/oracle.md, so implementations in any language can
read it (examples/oracle/ has readers in C and JavaScript). The expected outputs are *defined*
by the reference; tests/test_reference*.py prove the reference itself.

    operations.py  each operation's signature, defaults, outputs, conventions and spec section
    cases.py       the case table and its tags; coverage.py the cases that catch real bugs
    layers.py      the layer-level operations (X, W -> pruned W, selection, loss)
    files.py       export, the on-disk format, load_cases, the calling convention
    adapter.py     loading an implementation, ORACLE_MAP, adapter diagnostics
    check.py       check, compare_output, the result tables
    template.py    `slimgpt oracle template`: stubs to fill in
    mutations.py   the planted bugs the cases must catch
    cli.py         `slimgpt oracle export|check|template`
"""
from slimgpt.oracle.adapter import AdapterProblem, ImplementationError
from slimgpt.oracle.cases import PROVENANCE, Case, build_cases
from slimgpt.oracle.check import (ADAPTER, FAIL, NOT_IMPLEMENTED, PASS, SKIPPED, CaseResult, CheckResult, check,
                                  compare_output)
from slimgpt.oracle.cli import add_oracle_subcommand, main
from slimgpt.oracle.files import (FORMAT, FORMAT_VERSION, PROFILES, OracleFormatError, as_outputs, call, case_files,
                                  export, load_cases, read_arrays, read_index)
from slimgpt.oracle.operations import ERROR_KINDS, OPERATIONS, OUTPUTS, SIGNATURES

__all__ = [
    "AdapterProblem", "ImplementationError", "PROVENANCE", "Case", "build_cases",
    "ADAPTER", "FAIL", "NOT_IMPLEMENTED", "PASS", "SKIPPED", "CaseResult", "CheckResult", "check", "compare_output",
    "add_oracle_subcommand", "main",
    "FORMAT", "FORMAT_VERSION", "PROFILES", "OracleFormatError", "as_outputs", "call", "case_files", "export",
    "load_cases", "read_arrays", "read_index",
    "ERROR_KINDS", "OPERATIONS", "OUTPUTS", "SIGNATURES",
]
