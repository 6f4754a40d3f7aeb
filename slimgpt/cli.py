"""The `slimgpt` command: prune, eval, generate, oracle.

    slimgpt prune --model smollm2-135m --ratio 0.2 --out pruned-smollm2
    slimgpt eval pruned-smollm2 --seqlen 128 --max-tokens 16384 --json
    slimgpt generate pruned-smollm2 "The capital of France is"
    slimgpt generate pruned-smollm2 "What is the capital of France?" --chat
    slimgpt oracle export golden/

Progress bars and the per-layer log go to stderr; the result (or, with --json, one JSON object)
goes to stdout. Every expected failure (bad values, bad files, I/O errors, a model that
produces NaN) is one line on stderr and exit status 2, and nothing half-written is left
behind; --debug shows the traceback instead. Every output path goes through slimgpt.paths.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

from slimgpt.align import CLI_DEFAULT, cli_default


class UsageError(ValueError):
    """A bad command-line value (one clear message)."""


def _eprint(*a):
    # One write per line: ranks of a distributed run share stderr, and print's separate write
    # of the newline lets their lines interleave.
    sys.stderr.write(" ".join(map(str, a)) + "\n")
    sys.stderr.flush()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _fmt_bytes(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MiB"


def _check_context(model, seqlen: int, flag: str, allow_long: bool) -> None:
    """Sequences longer than the model's context are refused unless --allow-long-context (RoPE
    models run past it, but with positions the model never saw)."""
    ctx = model.config.max_position_embeddings
    if seqlen > ctx and not allow_long:
        raise UsageError(f"{flag} {seqlen} is longer than the model's context ({ctx} tokens); pass "
                         f"--allow-long-context to run beyond it")


# ----------------------------------------------------------------------------------------------

def cmd_prune(a):
    """slimgpt prune: in memory, or streamed layer by layer (--stream, --resume, or when the
    model would not fit); data-parallel when started by torchrun (slimgpt/distributed.py)."""
    from slimgpt import distributed
    from slimgpt.pipeline import PruneSettings

    if a.fixed_group is not None and a.fixed_group < 1:
        raise UsageError("--fixed-group must be a positive group size")
    if a.first is None and a.last is not None:
        raise UsageError("--last needs --first")
    if a.first is not None and a.ratio is not None:
        raise UsageError("give either --ratio or --first/--last, not both")
    if a.stream is False and a.resume:
        raise UsageError("--resume needs the streamed pipeline; drop --no-stream")
    s = PruneSettings(ratio=0.2 if a.ratio is None and a.first is None else a.ratio, schedule=a.schedule,
                      first=a.first, last=a.last, n_samples=a.nsamples, seqlen=a.seqlen, seed=a.seed, gqa=a.gqa,
                      method=a.method, percdamp=a.percdamp, backend=a.backend, batch_size=a.batch_size,
                      hit_target=not a.no_target, gcd=not a.no_gcd, compensate=not a.no_compensation,
                      method_options={"group_sizes": a.fixed_group} if a.fixed_group else {},
                      device=distributed.rank_device(a.device),
                      bias_compensation=True if a.bias_compensation else None,
                      align=a.align if a.align is not None else cli_default(a.schedule, a.method))
    s.validate()
    comm = distributed.from_env(s.device)
    try:
        return _prune(a, s, comm)
    except BaseException as e:
        comm.fail(e)                      # the other ranks stop with "rank R failed: ..." (not a hang)
        raise
    finally:
        comm.close()


def _prune(a, s, comm):
    from slimgpt.checkpoint import check_dtype, check_output_dir
    from slimgpt.ops import resolve_backend
    from slimgpt.textdata import calibration_source

    dtype = check_dtype(a.dtype) if a.dtype is not None else None
    # WikiText-2 calibration skips the tokens the quick dense/pruned perplexity scores (docs/pipeline.md §3)
    evaluated = (a.eval_tokens // a.eval_seqlen) * a.eval_seqlen if a.eval_tokens > 0 else 0
    calib_src = calibration_source(a.calib, skip_tokens=evaluated)
    inputs = (a.model,) + ((calib_src.path,) if calib_src.name == "file" else ())
    if a.resume and _finished_earlier(a, comm):
        return {"out": a.out, "finished_earlier": True} if comm.is_root else 0
    out = check_output_dir(a.out, a.force, inputs=inputs)
    report_path = _report_path(a, inputs + (str(out),)) if comm.is_root else None
    s.backend = resolve_backend(a.backend, torch.empty(0, device=s.device))
    if not comm.is_root:
        a.quiet = True
    stream = _streamed(a, s)
    ctx = dict(s=s, comm=comm, out=out, inputs=inputs, calib_src=calib_src, dtype=dtype, evaluated=evaluated,
               t0=time.perf_counter())
    report = (_prune_streamed if stream else _prune_in_memory)(a, **ctx)
    if not comm.is_root:
        return 0
    report["seconds_total"] = time.perf_counter() - ctx["t0"]
    report["peak_rss_mb"] = _peak_rss_mb()
    if report.get("device_peak_mb") is None and torch.device(s.device).type == "cuda":
        report["device_peak_mb"] = torch.cuda.max_memory_allocated(s.device) / 2 ** 20
    sm = report["prune"]
    _eprint(f"saved {out} ({report['dtype']}): {sm['params_before']:,} -> {sm['params_after']:,} parameters "
            f"({100 * sm['pruned_fraction_of_prunable']:.2f}% of prunable decoder parameters, "
            f"{100 * sm['pruned_fraction_of_total']:.2f}% of all); prune {sm['seconds']:.1f} s, "
            f"total {report['seconds_total']:.1f} s, peak RSS {report['peak_rss_mb']:.0f} MB"
            + (f", peak GPU memory {report['device_peak_mb']:.0f} MB" if report.get("device_peak_mb") else ""))
    if report_path is not None:
        from slimgpt import paths
        paths.write_file(report_path, (json.dumps(report, indent=1, default=str) + "\n").encode())
    return report


def _streamed(a, s) -> bool:
    """--stream / --no-stream, --resume (streamed), or: streamed when the in-memory estimate
    exceeds the memory available (a folder only; GGUF files and tiny models load whole)."""
    if a.stream is not None or a.resume:
        return bool(a.stream or a.resume)
    import os
    if not os.path.isdir(a.model):
        return False
    from slimgpt.loaders.hf_folder import read_config
    from slimgpt.pipeline import estimate
    from slimgpt.streaming import available_memory
    est = estimate(read_config(a.model), s.n_samples, s.seqlen, s.batch_size, s.cache_mb,
                   eval_tokens=a.eval_tokens, device=s.device)
    if est["memory_bytes"] > available_memory(s.device):
        _eprint(f"the in-memory run needs ~{_fmt_bytes(est['memory_bytes'])}, more than the "
                f"{_fmt_bytes(available_memory(s.device))} available: streaming layer by layer")
        return True
    return False


def _finished_earlier(a, comm) -> bool:
    """True (and the leftover state removed) for a streamed run killed after its output was put
    in place but before its state folder was removed: there is nothing left to do."""
    import shutil
    from pathlib import Path
    from slimgpt.checkpoint import is_checkpoint
    from slimgpt.streaming import RESUME_MARKER, state_dir
    d, out = state_dir(Path(a.out)), Path(a.out)
    done = (d / RESUME_MARKER).is_file() and not (d / "out").exists() and out.is_dir() and is_checkpoint(out)
    comm.barrier()
    if done and comm.is_root:
        shutil.rmtree(d, ignore_errors=True)
        _eprint(f"resume: {out} was already finished; removed its leftover state {d}")
    return done


def _print_estimate(est: dict, streamed: bool) -> None:
    _eprint(f"estimate: memory ~{_fmt_bytes(est['memory_bytes'])} at the peak, {'streamed' if streamed else 'in memory'} "
            f"(runtime and data {_fmt_bytes(est['runtime_bytes'])}, model {_fmt_bytes(est['model_bytes'])}, "
            f"activations {_fmt_bytes(est['activation_bytes'] + est['cache_bytes'])}, "
            f"H and OBS {_fmt_bytes(est['hessian_bytes'] + est['obs_bytes'])}, "
            f"evaluation {_fmt_bytes(est['eval_bytes'])}); pruning ~{est['seconds_at_60gflops']:.0f} s of "
            f"forward/Hessian work at 60 GFLOP/s + selection")


def _manifest(loaded, s, summary, records, calib_src, tok, report, extra=None) -> dict:
    m = {"source_model": loaded.source, "method": s.method, "backend": s.backend,
         "settings": summary["settings"], "ratios": summary["ratios"],
         "calibration": dict(calib_src.describe(tok), n_samples=s.n_samples, seqlen=s.seqlen, seed=s.seed),
         "source_dtype": loaded.source_dtype, "compute_dtype": "float32",
         "params_before": summary["params_before"], "params_after": summary["params_after"],
         "prune_seconds": summary["seconds"], "layers": records,
         "eval": {k: report[k] for k in ("dense", "pruned") if k in report}}
    return dict(m, **(extra or {}))


def _prune_in_memory(a, *, s, comm, out, inputs, calib_src, dtype, evaluated, t0) -> dict:
    from slimgpt.checkpoint import default_dtype, save_pretrained
    from slimgpt.evaluate import wikitext2_perplexity
    from slimgpt.loaders import load_model
    from slimgpt.pipeline import estimate, prune_model
    from slimgpt.textdata import calibration_windows

    if comm.is_root:
        _eprint(f"loading {a.model} ...")
    loaded = load_model(a.model)
    model, tok = loaded.model, loaded.tokenizer
    if tok is None:
        raise UsageError(f"{a.model}: no tokenizer.json, cannot build calibration data")
    _check_context(model, a.eval_seqlen, "--eval-seqlen", a.allow_long_context)
    calib = calibration_windows(tok, s.n_samples, s.seqlen, s.seed, model=model,
                                allow_long_context=a.allow_long_context, source=calib_src)
    dtype = dtype or default_dtype(loaded.source_dtype)
    if calib_src.name == "wikitext2" and comm.is_root:
        _eprint(f"calibration: WikiText-2 test after its first {evaluated} tokens (the evaluated ones); a later "
                f"WikiText-2 evaluation beyond them scores text the calibration has seen")
    est = estimate(model.config, s.n_samples, s.seqlen, s.batch_size, s.cache_mb, eval_tokens=a.eval_tokens,
                   eval_seqlen=a.eval_seqlen, device=s.device, source_kind=loaded.kind)
    if comm.is_root:
        _print_estimate(est, False)
    report = {"format": REPORT_FORMAT, "command": "prune", "model": loaded.source, "out": str(out), "mode": "memory",
              "backend": s.backend, "ranks": comm.world, "load_seconds": time.perf_counter() - t0, "estimate": est}
    if a.eval_tokens > 0 and comm.is_root:
        r = wikitext2_perplexity(model, tok, a.eval_seqlen, a.eval_tokens, progress=not a.quiet)
        report["dense"] = dict(r, params=model.num_parameters())
        _eprint(f"dense  PPL {r['ppl']:.3f}  (WikiText-2 test, {r['tokens']} tokens, seqlen {a.eval_seqlen})")
    result = prune_model(model, calib, s, log=(lambda m: None) if a.quiet else _eprint, progress=not a.quiet, comm=comm)
    report["prune"] = {k: v for k, v in result.summary.items() if k != "settings"}
    report["settings"] = result.summary["settings"]
    if a.eval_tokens > 0 and comm.is_root:
        r = wikitext2_perplexity(model, tok, a.eval_seqlen, a.eval_tokens, progress=not a.quiet)
        report["pruned"] = dict(r, params=model.num_parameters())
        _eprint(f"pruned PPL {r['ppl']:.3f}  (same tokens)")
    if comm.is_root:
        manifest = _manifest(loaded, s, result.summary, result.layers, calib_src, tok, report)
        save_pretrained(model, out, tok, manifest, force=a.force, inputs=inputs, dtype=dtype,
                        tokenizer_config=loaded.tokenizer_config, generation_config=loaded.generation_config)
        report["dtype"], report["calibration"] = dtype, manifest["calibration"]
    comm.barrier()
    return report


def _prune_streamed(a, *, s, comm, out, inputs, calib_src, dtype, evaluated, t0) -> dict:
    from slimgpt import streaming
    from slimgpt.checkpoint import default_dtype
    from slimgpt.pipeline import estimate
    from slimgpt.textdata import calibration_windows, wikitext2_tokens

    if comm.is_root:
        _eprint(f"opening {a.model} (streamed: one layer at a time) ...")
    src = streaming.open_source(a.model)
    tok = src.tokenizer
    if tok is None:
        raise UsageError(f"{a.model}: no tokenizer.json, cannot build calibration data")
    _check_context(src, a.eval_seqlen, "--eval-seqlen", a.allow_long_context)
    calib = calibration_windows(tok, s.n_samples, s.seqlen, s.seed, model=src.config,
                                allow_long_context=a.allow_long_context, source=calib_src)
    dtype = dtype or default_dtype(src.source_dtype)
    est = estimate(src.config, s.n_samples, s.seqlen, s.batch_size, s.cache_mb, eval_tokens=a.eval_tokens,
                   eval_seqlen=a.eval_seqlen, device=s.device, streamed=True, ranks=comm.world,
                   source_kind="folder" if isinstance(src, streaming.LazySource) else getattr(src.loaded, "kind", ""))
    if comm.is_root:
        _print_estimate(est, True)
    opts = streaming.StreamOptions(out=out, resume=a.resume, activations=a.activations, dtype=dtype,
                                   eval_tokens=wikitext2_tokens(tok) if a.eval_tokens > 0 else None,
                                   eval_seqlen=a.eval_seqlen, eval_max_tokens=a.eval_tokens,
                                   extra_fingerprint={"source": calib_src.describe()})
    report = {"format": REPORT_FORMAT, "command": "prune", "model": src.source, "out": str(out), "mode": "streamed",
              "backend": s.backend, "ranks": comm.world, "load_seconds": time.perf_counter() - t0, "estimate": est}
    result, finish = streaming.prune_streaming(src, calib, s, opts, comm=comm,
                                               log=(lambda m: None) if a.quiet else _eprint, progress=not a.quiet)
    report["prune"] = {k: v for k, v in result.summary.items() if k != "settings"}
    report["settings"] = result.summary["settings"]
    report["streaming"] = {"activations": result.storage, "resumed_from_layer": result.resumed_from,
                           "seconds": result.seconds}
    for k, v in result.eval.items():
        report[k] = dict(v, params=result.summary["params_before" if k == "dense" else "params_after"])
        _eprint(f"{k:6s} PPL {v['ppl']:.3f}  (WikiText-2 test, {v['tokens']} tokens, seqlen {a.eval_seqlen}; streamed)")
    manifest = _manifest(src, s, result.summary, result.records, calib_src, tok, report)
    finish(manifest, force=a.force, inputs=inputs)
    report["dtype"], report["calibration"] = dtype, manifest["calibration"]
    if torch.device(s.device).type == "cuda":
        report["device_peak_mb"] = torch.cuda.max_memory_allocated(s.device) / 2 ** 20
    return report


REPORT_FORMAT = "slimgpt-report"


def _report_path(a, inputs):
    """The --report destination, checked before any work (an existing file only with --force,
    and only a report slimgpt wrote)."""
    if a.report is None:
        return None
    from slimgpt import paths

    def is_report(p):
        d = paths.read_json(p)
        return isinstance(d, dict) and d.get("format") == REPORT_FORMAT

    return paths.check_output(a.report, inputs=inputs, force=a.force, folder=False, is_ours=is_report)


def cmd_eval(a) -> dict:
    from slimgpt.evaluate import wikitext2_perplexity
    from slimgpt.loaders import load_model

    if a.seqlen < 2:
        raise UsageError("--seqlen must be at least 2")
    if a.max_tokens is not None and a.max_tokens < a.seqlen:
        raise UsageError(f"--max-tokens {a.max_tokens} is less than one window of --seqlen {a.seqlen}")
    loaded = load_model(a.model)
    if loaded.tokenizer is None:
        raise UsageError(f"{a.model}: no tokenizer.json, cannot tokenize WikiText-2")
    _check_context(loaded.model, a.seqlen, "--seqlen", a.allow_long_context)
    r = wikitext2_perplexity(loaded.model, loaded.tokenizer, a.seqlen, a.max_tokens, progress=not a.quiet)
    out = {"model": loaded.source, "dataset": "wikitext2-test", "ppl": r["ppl"], "seqlen": r["seqlen"],
           "tokens": r["tokens"], "windows": r["windows"], "params": loaded.model.num_parameters(),
           "seconds": r["seconds"]}
    if not a.json:
        print(f"{loaded.source}: WikiText-2 PPL {r['ppl']:.4f} (seqlen {r['seqlen']}, {r['windows']} windows, "
              f"{r['tokens']} scored tokens), {out['params']:,} parameters")
    return out


def cmd_generate(a) -> dict:
    from slimgpt.generate import Sampling, chat_template_of, generate_text
    from slimgpt.loaders import load_model

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
    from slimgpt.loaders import DEFAULT_MODEL, NAMES
    from slimgpt.methods import METHODS
    from slimgpt.oracle import add_oracle_subcommand
    from slimgpt.export.cli import add_export_subcommand
    from slimgpt.finetune import add_finetune_subcommand
    from slimgpt.pipeline import GQA_MODES, SCHEDULES

    p = argparse.ArgumentParser(prog="slimgpt", description="SlimGPT structured pruning of LLaMA-style models")
    sub = p.add_subparsers(dest="cmd", required=True)

    pr = sub.add_parser("prune", help="prune a model and save it (atomically)")
    pr.add_argument("--model", default=DEFAULT_MODEL, help=f"{', '.join(NAMES)}, or a model folder (default {DEFAULT_MODEL})")
    pr.add_argument("--ratio", type=float, default=None,
                    help="global target: fraction of prunable decoder parameters (default 0.2)")
    pr.add_argument("--schedule", default="log", choices=SCHEDULES, help="per-layer ratio schedule (IPR; default log); beyond the paper: auto (from OBS error "
                    "curves) and flap (FLAP's per-layer counts)")
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
                         f"{CLI_DEFAULT}, 1 with --schedule auto|flap or --method flap); --align 1: the paper's exact counts")
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
    args = build_parser().parse_args(argv)
    if args.cmd == "oracle":
        from slimgpt.oracle.cli import run
        return _guarded(args, lambda: run(args))
    if args.cmd == "export":
        from slimgpt.export.cli import run as run_export
        return _guarded(args, lambda: run_export(args))
    if args.cmd == "finetune":
        from slimgpt.finetune import run as run_finetune
        return _guarded(args, lambda: run_finetune(args))
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    out = _guarded(args, lambda: {"prune": cmd_prune, "eval": cmd_eval, "generate": cmd_generate}[args.cmd](args))
    if isinstance(out, int):
        return out
    if args.json:
        print(json.dumps(out, default=str))
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
