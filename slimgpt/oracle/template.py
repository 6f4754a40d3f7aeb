"""`slimgpt oracle template`: a module of stubs an implementer fills in (or maps, adapter.py).

What this is: one function per operation with the full signature (positional arguments, then
keywords with their defaults), a docstring with shapes, conventions and the spec section, and a
body that raises NotImplementedError (counted as not implemented, not as a failure). What it is
not: an implementation.
"""
from __future__ import annotations

from slimgpt.oracle.operations import OPERATIONS

TEMPLATE_MARKER = "Written by `slimgpt oracle template`."
HEADER = '''"""My SlimGPT operations, checked with `slimgpt oracle check GOLDEN --impl {name}`.

Written by `slimgpt oracle template`. Fill in the functions (a stub that raises
NotImplementedError counts as not implemented, not as failed), or delete them and declare how
your own functions are called instead (docs/oracle.md, "Adapters"):

ORACLE_MAP = {{
    "operations": {{"prune_heads": "my_prune_heads"}},           # oracle name -> your function
    "arguments": {{"prune_heads": {{"W": "weight", "gcd": None}}}},  # your argument names; None: unsupported
    "positional": {{"prune_heads": ["weight", "H"]}},             # your positional order
    "outputs": {{"prune_heads": ["pruned_heads", "W_new"]}},      # your return order
    "errors": {{"numpy.linalg.LinAlgError": "not_positive_definite"}},
    "inputs": "numpy",                                           # or "torch": arrays arrive as tensors
}}

Conventions: W is d_out x d_in (PyTorch layout), pruning removes input columns; X is n x d_in,
one token per row; H = 2 XᵀX / n; results in float64; indices 0-based int64. Expected errors are
kinds: not_positive_definite (H that damping cannot repair), invalid_argument (a ValueError).
Sections are those of the project's docs/spec.md.
"""
'''


def render(module_name: str = "my_adapter") -> str:
    """The template's source text."""
    parts = [HEADER.format(name=f"{module_name}.py")]
    for op, o in OPERATIONS.items():
        kw = "".join(f", {k}={v!r}" for k, v in o.keywords.items())
        params = ", ".join(o.positional) + (", *" + kw if kw else "")
        outputs = ", ".join(n for n, _ in o.outputs)
        doc = "\n    ".join(o.doc.splitlines())
        parts.append(f'\n\ndef {op}({params}):\n    """{doc}\n\n    Spec: docs/spec.md {o.spec}. Output names (for ORACLE_MAP): '
                     f'{outputs}.\n    """\n    raise NotImplementedError("{op}")\n')
    return "".join(parts).rstrip() + "\n"
