"""Golden cases for the SlimGPT operations: export them from the reference, check any implementation.

A language-neutral oracle. `export(dir)` runs the NumPy float64 reference (`slimgpt.reference`)
on a fixed, seeded table of named cases and writes inputs and expected outputs as one `.npz`
per case plus an `index.json`; `check(dir, impl)` runs another implementation over the same
cases and reports, per case, pass/fail with max abs/rel errors. The file format is in
docs/oracle.md, so implementations in any language can read it. The expected outputs are
*defined* by the reference; tests/test_reference*.py prove the reference itself.

    cases.py   the case table and each operation's signature and outputs
    files.py   export, the on-disk format, load_cases, the calling convention
    check.py   check, compare_output, the result tables
    cli.py     `slimgpt oracle export DIR`, `slimgpt oracle check DIR --impl MODULE_OR_FILE.py`
"""
from slimgpt.oracle.cases import OUTPUTS, SIGNATURES, Case, build_cases
from slimgpt.oracle.check import (FAIL, NOT_IMPLEMENTED, PASS, SKIPPED, CaseResult, CheckResult,
                                  ImplementationError, check, compare_output)
from slimgpt.oracle.cli import add_oracle_subcommand, main
from slimgpt.oracle.files import (FORMAT, FORMAT_VERSION, PROFILES, OracleFormatError, as_outputs, call,
                                  export, load_cases, read_index)

__all__ = [
    "OUTPUTS", "SIGNATURES", "Case", "build_cases",
    "FAIL", "NOT_IMPLEMENTED", "PASS", "SKIPPED", "CaseResult", "CheckResult", "ImplementationError",
    "check", "compare_output", "add_oracle_subcommand", "main",
    "FORMAT", "FORMAT_VERSION", "PROFILES", "OracleFormatError", "as_outputs", "call", "export", "load_cases",
    "read_index",
]
