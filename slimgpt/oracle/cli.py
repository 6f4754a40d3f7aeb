"""`slimgpt oracle export|check|template` (also `python -m slimgpt.oracle ...`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from slimgpt import paths
from slimgpt.oracle.check import check
from slimgpt.oracle.files import FORMAT, PROFILES, export
from slimgpt.oracle.operations import OPERATIONS
from slimgpt.oracle.template import TEMPLATE_MARKER, render

DESCRIPTION = "Golden cases for the SlimGPT operations: export them from the reference, check any implementation."


def add_oracle_subcommand(subparsers) -> argparse.ArgumentParser:
    """Add `oracle export|check` to a CLI's subparsers; the parser's `func(args)` returns the exit code."""
    p = subparsers.add_parser("oracle", help="export golden cases / check an implementation against them",
                              description=DESCRIPTION)
    _add_commands(p)
    return p


def _add_commands(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="oracle_command", required=True)
    pe = sub.add_parser("export", help="write the golden cases (index.json, one folder of .npy per case) to DIR")
    pe.add_argument("dir")
    pe.add_argument("--force", action="store_true", help="replace an earlier export at DIR")
    pe.set_defaults(func=_cmd_export)
    pc = sub.add_parser("check", help="run an implementation over the cases in DIR")
    pc.add_argument("dir")
    pc.add_argument("--impl", required=True, help="module name (e.g. slimgpt.ops) or path to a .py file")
    # checked by check(), not by argparse: an unknown profile is one line, not a usage block
    pc.add_argument("--profile", default="float64",
                    help=f"one of {', '.join(PROFILES)}: float64 (default); float32 for single-precision "
                         "implementations; published-code: float32 and no cases tagged project (as the authors' code)")
    pc.add_argument("--backend", default=None, help="pass backend=... to every call (slimgpt.ops)")
    pc.add_argument("--op", action="append", dest="operations", help="check only this operation (repeatable)")
    pc.add_argument("--tag", action="append", dest="tags", help="check only cases with this tag (repeatable)")
    pc.add_argument("--skip-tag", action="append", dest="skip_tags",
                    help="leave out cases with this tag, e.g. project (repeatable)")
    pc.add_argument("-v", "--verbose", action="store_true", help="also list not-implemented and skipped cases")
    pc.set_defaults(func=_cmd_check)
    pt = sub.add_parser("template", help="write a module of stubs (signatures, defaults, docs) to fill in")
    pt.add_argument("--out", required=True, help="the .py file to write")
    pt.add_argument("--force", action="store_true", help="replace a module written by template before")
    pt.set_defaults(func=_cmd_template)
    for sp in (pe, pc, pt):
        sp.add_argument("--debug", action="store_true",
                        help="show the implementation's traceback with each failure, and any error's traceback")


def _cmd_export(args) -> int:
    out = paths.check_output(args.dir, force=args.force, is_ours=_is_export)
    with paths.atomic_folder(out) as tmp:
        index = export(tmp)
    n_err = sum("raises" in c for c in index["cases"])
    print(f"wrote {len(index['cases'])} cases ({n_err} expecting an error) to {args.dir}/index.json")
    return 0


def _cmd_check(args) -> int:
    result = check(args.dir, args.impl, profile=args.profile, operations=args.operations, backend=args.backend,
                   tags=args.tags, skip_tags=args.skip_tags, debug=args.debug)
    print(result.table(verbose=args.verbose))
    return 0 if result.ok else 1


def _cmd_template(args) -> int:
    if Path(args.out).suffix != ".py":
        raise ValueError(f"{args.out}: the template is a Python module; give a .py path")
    out = paths.check_output(args.out, force=args.force, folder=False, is_ours=_is_template)
    paths.write_file(out, render(out.stem).encode())
    print(f"wrote {args.out}: {len(OPERATIONS)} operations to fill in or map; "
          f"check with: slimgpt oracle check GOLDEN --impl {args.out}")
    return 0


def _is_template(path: Path) -> bool:
    """A module written by `template` (its marker line), which --force may replace."""
    try:
        return TEMPLATE_MARKER in path.read_text(errors="replace")
    except OSError:
        return False


def _is_export(folder: Path) -> bool:
    """An earlier export: index.json of the oracle's format and only its cases/ beside it."""
    index = paths.read_json(folder / "index.json")
    return (isinstance(index, dict) and index.get("format") == FORMAT
            and {p.name for p in folder.iterdir()} <= {"index.json", "cases"})


def run(args) -> int:
    """Run a parsed `oracle` command; expected failures are one line on stderr and exit 2."""
    try:
        return args.func(args)
    except (ValueError, OSError) as e:
        if args.debug:
            raise
        print(f"slimgpt oracle {args.oracle_command}: error: {e}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    """`slimgpt oracle` with argv = ["export", DIR], ["check", DIR, "--impl", MODULE, ...] or
    ["template", "--out", FILE]."""
    parser = argparse.ArgumentParser(prog="slimgpt oracle", description=DESCRIPTION)
    _add_commands(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
