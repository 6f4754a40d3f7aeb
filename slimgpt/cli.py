"""The `slimgpt` command: argument parsing and printing around the library.

    slimgpt prune --model smollm2-135m --ratio 0.2 --out pruned-smollm2        (slimgpt.runner)
    slimgpt eval pruned-smollm2 --seqlen 128 --max-tokens 16384 --json         (slimgpt.evaluate)
    slimgpt generate pruned-smollm2 "The capital of France is"                  (slimgpt.generate)
    slimgpt generate pruned-smollm2 "What is the capital of France?" --chat
    slimgpt oracle export golden/   |   slimgpt oracle check golden/ --impl M   (slimgpt.oracle)
    slimgpt export pruned-smollm2 --format hf --out smollm2-hf                 (slimgpt.export)
    slimgpt finetune pruned-smollm2 --out smollm2-lora                         (slimgpt.finetune)

Progress bars and the per-layer log go to stderr; the result (or, with --json, one JSON object)
goes to stdout. Every expected failure (bad values, bad files, I/O errors, a model that
produces NaN) is one line on stderr and exit status 2, and nothing half-written is left
behind; --debug shows the traceback instead. Every output path goes through slimgpt.paths.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from slimgpt import distributed
from slimgpt.align import CLI_DEFAULT
from slimgpt.evaluate import wikitext2_perplexity
from slimgpt.export.cli import add_export_subcommand
from slimgpt.export.cli import run as run_export
from slimgpt.finetune import add_finetune_subcommand
from slimgpt.finetune import run as run_finetune
from slimgpt.generate import Sampling, chat_template_of, generate_text
from slimgpt.gqa import GQA_MODES
from slimgpt.loaders import DEFAULT_MODEL, NAMES, load_model
from slimgpt.methods import METHODS
from slimgpt.oracle import add_oracle_subcommand
from slimgpt.oracle.cli import run as run_oracle
from slimgpt.pipeline import PruneSettings
from slimgpt.runner import RunOptions, check_context, run_prune
from slimgpt.schedules import SCHEDULES, default_align


class UsageError(ValueError):
    """A bad command-line value (one clear message)."""


def _eprint(*a):
    # One write per line: ranks of a distributed run share stderr, and print's separate write
    # of the newline lets their lines interleave.
    sys.stderr.write(" ".join(map(str, a)) + "\n")
    sys.stderr.flush()


# ----------------------------------------------------------------------------------------------

def cmd_prune(a):
    """slimgpt prune: runner.run_prune (in memory, or streamed layer by layer with --stream, --resume
    or when the model would not fit; data-parallel under torchrun) and its one-line summary."""
    s = PruneSettings(ratio=0.2 if a.ratio is None and a.first is None else a.ratio, schedule=a.schedule,
                      first=a.first, last=a.last, n_samples=a.nsamples, seqlen=a.seqlen, seed=a.seed, gqa=a.gqa,
                      method=a.method, percdamp=a.percdamp, backend=a.backend, batch_size=a.batch_size,
                      hit_target=not a.no_target, gcd=not a.no_gcd, compensate=not a.no_compensation,
                      method_options={"group_sizes": a.fixed_group} if a.fixed_group is not None else {},
                      device=distributed.rank_device(a.device),
                      bias_compensation=True if a.bias_compensation else None,
                      align=a.align if a.align is not None else default_align(a.schedule, a.method),
                      align_heads=not a.align_ffn_only)
    o = RunOptions(model=a.model, out=a.out, force=a.force, dtype=a.dtype, calib=a.calib, eval_tokens=a.eval_tokens,
                   eval_seqlen=a.eval_seqlen, allow_long_context=a.allow_long_context, stream=a.stream,
                   resume=a.resume, activations=a.activations, report=a.report, quiet=a.quiet)
    report = run_prune(s, o, log=_eprint)
    if isinstance(report, dict) and not report.get("finished_earlier"):
        sm = report["prune"]
        _eprint(f"saved {report['out']} ({report['dtype']}): {sm['params_before']:,} -> {sm['params_after']:,} "
                f"parameters ({100 * sm['pruned_fraction_of_prunable']:.2f}% of prunable decoder parameters, "
                f"{100 * sm['pruned_fraction_of_total']:.2f}% of all); prune {sm['seconds']:.1f} s, "
                f"total {report['seconds_total']:.1f} s, peak RSS {report['peak_rss_mb']:.0f} MB"
                + (f", peak GPU memory {report['device_peak_mb']:.0f} MB" if report.get("device_peak_mb") else ""))
    return report


def cmd_eval(a) -> dict:
    if a.seqlen < 2:
        raise UsageError("--seqlen must be at least 2")
    if a.max_tokens is not None and a.max_tokens < a.seqlen:
        raise UsageError(f"--max-tokens {a.max_tokens} is less than one window of --seqlen {a.seqlen}")
    loaded = load_model(a.model)
    if loaded.tokenizer is None:
        raise UsageError(f"{a.model}: no tokenizer.json, cannot tokenize WikiText-2")
    check_context(loaded.model.config, a.seqlen, "--seqlen", a.allow_long_context)
    r = wikitext2_perplexity(loaded.model, loaded.tokenizer, a.seqlen, a.max_tokens, progress=not a.quiet)
    out = {"model": loaded.source, "dataset": "wikitext2-test", "ppl": r["ppl"], "seqlen": r["seqlen"],
           "tokens": r["tokens"], "windows": r["windows"], "params": loaded.model.num_parameters(),
           "seconds": r["seconds"]}
    if not a.json:
        print(f"{loaded.source}: WikiText-2 PPL {r['ppl']:.4f} (seqlen {r['seqlen']}, {r['windows']} windows, "
              f"{r['tokens']} scored tokens), {out['params']:,} parameters")
    return out


def cmd_generate(a) -> dict:
    prompt = a.prompt_flag if a.prompt_flag is not None else a.prompt
    if prompt is None:
        raise UsageError("give a prompt: slimgpt generate MODEL \"PROMPT\" (or --prompt)")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("the prompt is not valid UTF-8 text") from None
    if a.max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be at least 1")
    sampling = Sampling(a.temperature, a.top_p, a.top_k, a.seed)
    try:
        sampling.validate()
    except ValueError as e:
        raise UsageError(f"--{e}".replace("_", "-", 1)) from None
    loaded = load_model(a.model)
    if loaded.tokenizer is None:
        raise UsageError(f"{a.model}: no tokenizer.json")
    if a.chat:
        chat_template_of(loaded.tokenizer_config)            # no template: one line, before any work
    stream = not a.json
    started = []                       # the prompt is printed with the first piece (not before a failure)

    def show(piece):
        if not started:
            started.append(True)
            if not a.chat:
                print(prompt, end="")
        print(piece, end="", flush=True)

    r = generate_text(loaded.model, loaded.tokenizer, prompt, a.max_new_tokens, chat=a.chat,
                      tokenizer_config=loaded.tokenizer_config, generation_config=loaded.generation_config,
                      sampling=sampling, use_cache=not a.no_cache, on_text=show if stream else None)
    if stream:
        show("")
        print(flush=True)
    if not a.quiet:
        _eprint(f"{r['new_tokens']} tokens in {r['seconds']:.2f} s: {r['tokens_per_second']:.1f} tokens/s "
                f"(prompt {r['prompt_tokens']} tokens, first token after {r['first_token_seconds']:.2f} s, then "
                f"{r['decode_tokens_per_second']:.1f} tokens/s; KV cache {'off' if a.no_cache else 'on'}, "
                f"{torch.get_num_threads()} threads; stop: {r['stop']})")
    return {"model": loaded.source, "prompt": prompt, "chat": a.chat, "completion": r["completion"],
            "prompt_tokens": r["prompt_tokens"], "new_tokens": r["new_tokens"], "stop": r["stop"],
            "seconds": r["seconds"], "first_token_seconds": r["first_token_seconds"],
            "tokens_per_second": r["tokens_per_second"], "decode_tokens_per_second": r["decode_tokens_per_second"],
            "cache": r["cache"], "threads": torch.get_num_threads(),
            "sampling": {"temperature": a.temperature, "top_p": a.top_p, "top_k": a.top_k, "seed": a.seed}}


# ----------------------------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slimgpt", description="SlimGPT structured pruning of LLaMA-style models")
    sub = p.add_subparsers(dest="cmd", required=True)

    pr = sub.add_parser("prune", help="prune a model and save it (atomically)")
    pr.add_argument("--model", default=DEFAULT_MODEL, help=f"{', '.join(NAMES)}, or a model folder (default {DEFAULT_MODEL})")
    pr.add_argument("--ratio", type=float, default=None,
                    help="global target: fraction of prunable decoder parameters (default 0.2)")
    pr.add_argument("--schedule", default="log", choices=list(SCHEDULES), help="per-layer ratio schedule (IPR; default log); beyond the paper: flap (FLAP's per-layer "
                    "counts; better than log at 10%% on SmolLM2, worse from 30%%: docs/study.md)")
    pr.add_argument("--first", type=float, default=None, help="explicit first-layer ratio (instead of --ratio)")
    pr.add_argument("--last", type=float, default=None, help="explicit last-layer ratio (with --first)")
    pr.add_argument("--nsamples", type=_positive_int, default=64, help="calibration windows (default 64)")
    pr.add_argument("--seqlen", type=_positive_int, default=256, help="calibration window length (default 256)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--backend", default=None, choices=("reference", "cpu", "cuda"),
                    help="algebra backend (default: fastest available)")
    pr.add_argument("--gqa", default="query", choices=GQA_MODES, help="GQA granularity (default query)")
    pr.add_argument("--method", default="slimgpt", choices=sorted(METHODS), help="selection method")
    pr.add_argument("--no-compensation", action="store_true",
                    help="ablation: zero the pruned columns without the OBS update (FLAP: no bias)")
    pr.add_argument("--no-gcd", action="store_true",
                    help="ablation (-GCD): head errors from the plain diagonal of H^-1, no grouped Cholesky")
    pr.add_argument("--fixed-group", type=int, default=None, metavar="G",
                    help="ablation (-DGS): prune FFN channels in fixed groups of G (paper: 128)")
    pr.add_argument("--bias-compensation", action="store_true",
                    help="beyond the paper: mean-shift bias b += (W - W_new)·mean(x) after the OBS update")
    pr.add_argument("--align", type=_positive_int, default=None, metavar="N",
                    help=f"keep a multiple of N FFN channels per layer and equal query heads per KV head, so the "
                         f"model runs faster than dense in llama.cpp (slimgpt/align.py, docs/inference.md; default "
                         f"{CLI_DEFAULT}, 1 with --schedule flap or --method flap); --align 1: the paper's exact counts")
    pr.add_argument("--align-ffn-only", action="store_true",
                    help="with --align N: align the FFN widths only and keep the paper's head counts (better "
                         "quality, but uneven query->KV groups that llama.cpp runs slower; docs/inference.md)")
    pr.add_argument("--percdamp", type=float, default=0.01, help="damping, fraction of mean diag H (default 0.01)")
    pr.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where the model, activations and statistics live")
    pr.add_argument("--batch-size", type=_positive_int, default=8)
    pr.add_argument("--no-target", action="store_true",
                    help="use round(m·r_i) channels as published, without re-apportioning to hit the target")
    pr.add_argument("--eval-tokens", type=int, default=4096,
                    help="WikiText-2 tokens for the quick dense/pruned PPL (0: skip; default 4096)")
    pr.add_argument("--eval-seqlen", type=_positive_int, default=128)
    pr.add_argument("--calib", default="c4", metavar="c4|wikitext2|FILE",
                    help="calibration data: the packaged C4 sample (default), WikiText-2 (after the evaluated "
                         "tokens), or a UTF-8 text file (documents separated by blank lines) or .jsonl file "
                         "(one {\"text\": ...} object per line)")
    pr.add_argument("--dtype", default=None, metavar="float32|bfloat16|float16",
                    help="dtype of the saved weights (default: the input's when 16-bit, else float32); "
                         "pruning itself always runs in float32/float64")
    pr.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    st = pr.add_mutually_exclusive_group()
    st.add_argument("--stream", dest="stream", action="store_true", default=None,
                    help="stream: one decoder layer in memory at a time, written to --out's shards as it is "
                         "done (default: when the in-memory run would not fit)")
    st.add_argument("--no-stream", dest="stream", action="store_false", help="keep the whole model in memory")
    pr.add_argument("--resume", action="store_true",
                    help="continue a streamed run killed earlier from its last finished layer (the state is kept in "
                         "a hidden folder beside --out); without it a streamed run starts over")
    pr.add_argument("--activations", default="auto", choices=("auto", "ram", "disk"),
                    help="streamed runs: calibration activations in memory (ram; on the GPU with --device cuda) "
                         "or in files beside --out (disk); auto: disk when they would take over a quarter of "
                         "the memory available")
    pr.add_argument("--force", action="store_true", help="replace an earlier slimgpt output at --out / --report")
    pr.add_argument("--report", default=None, help="also write the JSON report to this file")

    ev = sub.add_parser("eval", help="WikiText-2 test perplexity")
    ev.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    ev.add_argument("--seqlen", type=int, default=128, help="window length (128: paper protocol; 2048: full context)")
    ev.add_argument("--max-tokens", type=_positive_int, default=None,
                    help="score only the first windows covering this many tokens")

    ge = sub.add_parser("generate", help="continue a prompt (greedy or sampled), streamed, with a KV cache")
    ge.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    ge.add_argument("prompt", nargs="?", default=None, help="the prompt (or --prompt)")
    ge.add_argument("--prompt", dest="prompt_flag", default=None, help="the prompt")
    ge.add_argument("--max-new-tokens", type=int, default=32, help="at most this many new tokens (and never past "
                                                                   "the model's context; default 32)")
    ge.add_argument("--chat", action="store_true",
                    help="send the prompt as a user message in the model's chat template (instruct models)")
    ge.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sample")
    ge.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the most likely tokens up to "
                                                             "this probability (default 1: off)")
    ge.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (default 0: off)")
    ge.add_argument("--seed", type=int, default=0, help="seed of the sampler (same seed, same tokens)")
    ge.add_argument("--no-cache", action="store_true", help="re-run the whole sequence every step (no KV cache)")

    add_oracle_subcommand(sub)
    add_export_subcommand(sub)
    add_finetune_subcommand(sub)

    for sp in (pr, ev, ge):
        sp.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        sp.add_argument("--quiet", action="store_true", help="no progress bars or per-layer log")
        sp.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    for sp in (pr, ev):
        sp.add_argument("--allow-long-context", action="store_true",
                        help="allow sequences longer than the model's context (RoPE extrapolates)")
    for sp in (pr, ev, ge):
        sp.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def main(argv=None) -> int:
    """Parse, run one subcommand (COMMANDS), print its result (--json: one JSON object) and return
    the exit status."""
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    with torch.set_grad_enabled(args.cmd == "finetune"):
        out = _guarded(args, lambda: COMMANDS[args.cmd](args))
    if isinstance(out, int):
        return out
    if args.json:
        print(json.dumps(out, default=str))
    return 0


COMMANDS = {"prune": cmd_prune, "eval": cmd_eval, "generate": cmd_generate, "oracle": run_oracle,
            "export": run_export, "finetune": run_finetune}


def _guarded(args, work):
    """Run a command; turn every failure into one line on stderr and an exit status."""
    try:
        return work()
    except KeyboardInterrupt:
        _eprint(f"slimgpt {args.cmd}: interrupted; nothing was saved")
        return 130
    except Exception as e:  # noqa: BLE001 - the one place errors become exit codes
        if getattr(args, "debug", False):
            raise
        expected = isinstance(e, (ValueError, OSError, RuntimeError, FloatingPointError, MemoryError,
                                  UnicodeError, EOFError))
        what = str(e) or type(e).__name__
        if isinstance(e, MemoryError):
            what = "out of memory" + (f" ({what})" if str(e) else "")
        elif isinstance(e, OSError) and e.filename and str(e.filename) not in what:
            what = f"{e.filename}: {e.strerror or what}"
        if not expected:
            what = f"internal error: {type(e).__name__}: {what} (rerun with --debug for the traceback)"
        _eprint(f"slimgpt {args.cmd}: error: {what}")
        return 2 if expected else 1


def cli_child(command: list[str], env: dict, stderr_path: str) -> None:
    """Run `slimgpt COMMAND` as the body of a multiprocessing child: `env` added to the
    environment, stderr written to `stderr_path`, the exit code passed to os._exit (the fault
    tests kill it at chosen points). It lives in the package rather than a test module because a
    spawned or forkserver child must import its target by name, and the tests folder is not
    importable under pytest's importlib mode."""
    os.environ.update(env)
    fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 2)
    torch.set_num_threads(1)
    rc = main(command)
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
