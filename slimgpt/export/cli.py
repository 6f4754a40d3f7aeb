"""`slimgpt export SRC --format hf|gguf --out DST [--dtype ...] [--force]`.

    slimgpt export pruned-smollm2 --format hf --out smollm2-hf
    slimgpt export pruned-smollm2 --format gguf --dtype float16 --out smollm2-f16.gguf

Progress goes to stderr, the result (or with --json one JSON object) to stdout. Failures are
one line on stderr via slimgpt.cli's handler (exit status 2), and nothing is written.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from slimgpt.export import DTYPES, FORMATS, export_checkpoint

DESCRIPTION = ("Export a slimgpt checkpoint to a Hugging Face transformers folder (--format hf) or a llama.cpp "
               "GGUF file (--format gguf). See docs/export.md.")


def add_export_subcommand(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="export a pruned checkpoint to Hugging Face transformers or GGUF",
                              description=DESCRIPTION)
    p.add_argument("src", help="a slimgpt checkpoint folder (written by slimgpt prune)")
    # choices are checked by export_checkpoint, so that a bad value is the same one line as other errors
    p.add_argument("--format", dest="export_format", required=True, metavar="{" + ",".join(FORMATS) + "}",
                   help="hf: a transformers folder; gguf: a llama.cpp GGUF file")
    p.add_argument("--out", required=True,
                   help="output folder (hf, gguf), or a file name ending in .gguf (gguf)")
    p.add_argument("--dtype", default=None, metavar="{" + ",".join(DTYPES) + "}",
                   help="tensor type: float32, bfloat16, float16; q8_0 or q4_k_m (llama.cpp's quantizer) for gguf (default: the checkpoint's, "
                        "float32 unless it stores 16-bit weights)")
    p.add_argument("--force", action="store_true", help="replace an earlier slimgpt export at --out")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def run(args) -> int:
    """Run a parsed `export` command (errors propagate to slimgpt.cli's one-line handler)."""
    t0 = time.perf_counter()
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    summary = export_checkpoint(args.src, args.out, format=args.export_format, dtype=args.dtype, force=args.force,
                                log=log)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        how = ""
        if summary["format"] == "hf":
            how = (" (load with trust_remote_code=True)" if summary.get("trust_remote_code")
                   else " (stock transformers class, no custom code)")
            kind = summary.get("model_type")
        else:
            kind = f"arch {summary.get('arch')}, pre-tokenizer {summary.get('tokenizer_pre')}"
        print(f"wrote {summary['out']}: {summary['format']} {summary['layout']}, {kind}, {summary['dtype']}{how} "
              f"in {summary['seconds']:.1f} s")
    return 0
