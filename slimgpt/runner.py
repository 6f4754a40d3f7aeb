"""One `slimgpt prune` run: from a model name to a saved checkpoint, its manifest and its report.

What this is: the pipeline layer under the command line. `run_prune(settings, options)` loads the
model (whole, or streamed one layer at a time when asked or when it would not fit), draws the
calibration windows, measures the quick dense perplexity, prunes (pipeline.prune_model or
streaming.prune_streaming), measures the pruned perplexity, saves the checkpoint with its
manifest and returns the JSON report (also written to `options.report`). With torchrun every rank
calls it and rank 0 writes (distributed.py). What it is not: argument parsing or printing of the
result (cli.py), the layer loop (pipeline.py) or the save itself (checkpoint.py, streaming.py).
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from slimgpt import distributed, paths, streaming
from slimgpt.checkpoint import check_dtype, check_output_dir, default_dtype, is_checkpoint, save_pretrained
from slimgpt.evaluate import wikitext2_perplexity
from slimgpt.loaders import load_model
from slimgpt.loaders.hf_folder import read_config
from slimgpt.ops import resolve_backend
from slimgpt.pipeline import PruneError, PruneSettings, estimate, prune_model
from slimgpt.textdata import calibration_source, calibration_windows, wikitext2_tokens

REPORT_FORMAT = "slimgpt-report"


@dataclass
class RunOptions:
    """What a run needs beyond the pruning settings: input, output, evaluation and streaming."""
    model: str
    out: str
    force: bool = False
    dtype: str | None = None            # of the saved weights; None: the input's when 16-bit, else float32
    calib: str = "c4"                   # c4 | wikitext2 | a text or .jsonl file
    eval_tokens: int = 4096             # WikiText-2 tokens of the quick dense/pruned PPL (0: skip)
    eval_seqlen: int = 128
    allow_long_context: bool = False
    stream: bool | None = None          # None: streamed when the in-memory run would not fit
    resume: bool = False
    activations: str = "auto"
    report: str | None = None           # also write the report here
    quiet: bool = False

    def validate(self) -> None:
        if self.stream is False and self.resume:
            raise PruneError("--resume needs the streamed pipeline; drop --no-stream")


def run_prune(s: PruneSettings, o: RunOptions, *, log=None):
    """Prune o.model with settings s into o.out (module docstring). Returns the report on rank 0
    (0 on the other ranks); `log(line)` receives the progress lines."""
    s.validate()
    o.validate()
    comm = distributed.from_env(s.device)
    try:
        return _run(s, o, comm, log or (lambda m: None))
    except BaseException as e:
        comm.fail(e)                      # the other ranks stop with "rank R failed: ..." (not a hang)
        raise
    finally:
        comm.close()


def _run(s, o, comm, log):
    dtype = check_dtype(o.dtype) if o.dtype is not None else None
    # WikiText-2 calibration skips the tokens the quick dense/pruned perplexity scores (docs/pipeline.md §3)
    evaluated = (o.eval_tokens // o.eval_seqlen) * o.eval_seqlen if o.eval_tokens > 0 else 0
    calib_src = calibration_source(o.calib, skip_tokens=evaluated)
    inputs = _inputs(o, calib_src)
    if o.resume and _finished_earlier(o, comm, log):
        return {"out": o.out, "finished_earlier": True} if comm.is_root else 0
    out = check_output_dir(o.out, o.force, inputs=inputs)
    report_path = _report_path(o, inputs + (str(out),)) if comm.is_root else None
    s.backend = resolve_backend(s.backend, torch.empty(0, device=s.device))
    quiet, t0 = o.quiet or not comm.is_root, time.perf_counter()
    say = log if comm.is_root else (lambda m: None)
    stream = _streamed(o, s, say)
    say(f"opening {o.model} (streamed: one layer at a time) ..." if stream else f"loading {o.model} ...")
    src = streaming.open_source(o.model) if stream else load_model(o.model)
    tok, cfg = src.tokenizer, src.config if stream else src.model.config
    if tok is None:
        raise PruneError(f"{o.model}: no tokenizer.json, cannot build calibration data")
    check_context(cfg, o.eval_seqlen, "--eval-seqlen", o.allow_long_context)
    calib = calibration_windows(tok, s.n_samples, s.seqlen, s.seed, model=cfg if stream else src.model,
                                allow_long_context=o.allow_long_context, source=calib_src)
    dtype = dtype or default_dtype(src.source_dtype)
    if calib_src.name == "wikitext2":
        say(f"calibration: WikiText-2 test after its first {evaluated} tokens (the evaluated ones); a later "
            f"WikiText-2 evaluation beyond them scores text the calibration has seen")
    kind = ("folder" if isinstance(src, streaming.LazySource) else getattr(src.loaded, "kind", "")) if stream \
        else src.kind
    est = estimate(cfg, s.n_samples, s.seqlen, s.batch_size, s.cache_mb, eval_tokens=o.eval_tokens,
                   eval_seqlen=o.eval_seqlen, device=s.device, streamed=stream, ranks=comm.world if stream else 1,
                   source_kind=kind)
    say(estimate_line(est, stream))
    report = {"format": REPORT_FORMAT, "command": "prune", "model": src.source, "out": str(out),
              "mode": "streamed" if stream else "memory", "backend": s.backend, "ranks": comm.world,
              "load_seconds": time.perf_counter() - t0, "estimate": est}
    run = _prune_streamed if stream else _prune_in_memory
    summary, records, save = run(src, calib, s, o, comm, report, out=out, dtype=dtype, quiet=quiet,
                                 calib_src=calib_src, log=log)
    report["prune"] = {k: v for k, v in summary.items() if k != "settings"}
    report["settings"] = summary["settings"]
    m = manifest(src, s, summary, records, dict(calib_src.describe(tok), n_samples=s.n_samples, seqlen=s.seqlen,
                                                seed=s.seed), report)
    save(m)                             # every rank: the streamed save is collective, the in-memory one rank 0's
    report["dtype"], report["calibration"] = dtype, m["calibration"]
    comm.barrier()
    if not comm.is_root:
        return 0
    report["seconds_total"] = time.perf_counter() - t0
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if torch.device(s.device).type == "cuda":
        report["device_peak_mb"] = torch.cuda.max_memory_allocated(s.device) / 2 ** 20
    if report_path is not None:
        paths.write_file(report_path, (json.dumps(report, indent=1, default=str) + "\n").encode())
    return report


def _prune_in_memory(loaded, calib, s, o, comm, report, *, out, dtype, quiet, calib_src, log):
    """The whole model in memory: dense PPL, prune_model, pruned PPL. Returns (summary, records,
    save(manifest))."""
    model, tok = loaded.model, loaded.tokenizer
    if o.eval_tokens > 0 and comm.is_root:
        _perplexity(report, "dense", model, tok, o, quiet, log)
    result = prune_model(model, calib, s, log=(lambda m: None) if quiet else log, progress=not quiet, comm=comm)
    if o.eval_tokens > 0 and comm.is_root:
        _perplexity(report, "pruned", model, tok, o, quiet, log)

    def save(m):
        if comm.is_root:
            save_pretrained(model, out, tok, m, force=o.force, inputs=_inputs(o, calib_src), dtype=dtype,
                            tokenizer_config=loaded.tokenizer_config, generation_config=loaded.generation_config)
    return result.summary, result.layers, save


def _perplexity(report, which, model, tok, o, quiet, log):
    r = wikitext2_perplexity(model, tok, o.eval_seqlen, o.eval_tokens, progress=not quiet)
    report[which] = dict(r, params=model.num_parameters())
    log(f"dense  PPL {r['ppl']:.3f}  (WikiText-2 test, {r['tokens']} tokens, seqlen {o.eval_seqlen})"
        if which == "dense" else f"pruned PPL {r['ppl']:.3f}  (same tokens)")


def _prune_streamed(src, calib, s, o, comm, report, *, out, dtype, quiet, calib_src, log):
    """One layer at a time (streaming.py), the perplexities measured on the way. Returns (summary,
    records, save(manifest))."""
    tok = src.tokenizer
    opts = streaming.StreamOptions(out=out, resume=o.resume, activations=o.activations, dtype=dtype,
                                   eval_tokens=wikitext2_tokens(tok) if o.eval_tokens > 0 else None,
                                   eval_seqlen=o.eval_seqlen, eval_max_tokens=o.eval_tokens,
                                   extra_fingerprint={"source": calib_src.describe()})
    result, finish = streaming.prune_streaming(src, calib, s, opts, comm=comm,
                                               log=(lambda m: None) if quiet else log, progress=not quiet)
    report["streaming"] = {"activations": result.storage, "resumed_from_layer": result.resumed_from,
                           "seconds": result.seconds}
    for k, v in result.eval.items():
        report[k] = dict(v, params=result.summary["params_before" if k == "dense" else "params_after"])
        log(f"{k:6s} PPL {v['ppl']:.3f}  (WikiText-2 test, {v['tokens']} tokens, seqlen {o.eval_seqlen}; streamed)")

    def save(m):
        finish(m, force=o.force, inputs=_inputs(o, calib_src))
    return result.summary, result.records, save


def _inputs(o, calib_src) -> tuple:
    return (o.model,) + ((calib_src.path,) if calib_src.name == "file" else ())


def manifest(src, s, summary, records, calibration, report) -> dict:
    """The checkpoint's manifest.json: source, method, settings, ratios, calibration, shapes, the
    per-layer log and the quick perplexities."""
    return {"source_model": src.source, "method": s.method, "backend": s.backend,
            "settings": summary["settings"], "ratios": summary["ratios"], "calibration": calibration,
            "source_dtype": src.source_dtype, "compute_dtype": "float32",
            "params_before": summary["params_before"], "params_after": summary["params_after"],
            "prune_seconds": summary["seconds"], "layers": records,
            "eval": {k: report[k] for k in ("dense", "pruned") if k in report}}


def check_context(cfg, seqlen: int, flag: str, allow_long: bool) -> None:
    """Sequences longer than the model's context are refused unless --allow-long-context (RoPE
    models run past it, but with positions the model never saw)."""
    ctx = cfg.max_position_embeddings
    if seqlen > ctx and not allow_long:
        raise PruneError(f"{flag} {seqlen} is longer than the model's context ({ctx} tokens); pass "
                         f"--allow-long-context to run beyond it")


def _streamed(o, s, say) -> bool:
    """--stream / --no-stream, --resume (streamed), or: streamed when the in-memory estimate
    exceeds the memory available (a folder only; GGUF files and tiny models load whole)."""
    if o.stream is not None or o.resume:
        return bool(o.stream or o.resume)
    if not os.path.isdir(o.model):
        return False
    est = estimate(read_config(o.model), s.n_samples, s.seqlen, s.batch_size, s.cache_mb,
                   eval_tokens=o.eval_tokens, device=s.device)
    if est["memory_bytes"] > streaming.available_memory(s.device):
        say(f"the in-memory run needs ~{fmt_bytes(est['memory_bytes'])}, more than the "
            f"{fmt_bytes(streaming.available_memory(s.device))} available: streaming layer by layer")
        return True
    return False


def _finished_earlier(o, comm, log) -> bool:
    """True (and the leftover state removed) for a streamed run killed after its output was put
    in place but before its state folder was removed: there is nothing left to do."""
    d, out = streaming.state_dir(Path(o.out)), Path(o.out)
    done = (d / streaming.RESUME_MARKER).is_file() and not (d / "out").exists() and out.is_dir() \
        and is_checkpoint(out)
    comm.barrier()
    if done and comm.is_root:
        shutil.rmtree(d, ignore_errors=True)
        log(f"resume: {out} was already finished; removed its leftover state {d}")
    return done


def _report_path(o, inputs):
    """The --report destination, checked before any work (an existing file only with --force,
    and only a report slimgpt wrote)."""
    if o.report is None:
        return None

    def is_report(p):
        d = paths.read_json(p)
        return isinstance(d, dict) and d.get("format") == REPORT_FORMAT

    return paths.check_output(o.report, inputs=inputs, force=o.force, folder=False, is_ours=is_report)


def fmt_bytes(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MiB"


def estimate_line(est: dict, streamed: bool) -> str:
    return (f"estimate: memory ~{fmt_bytes(est['memory_bytes'])} at the peak, {'streamed' if streamed else 'in memory'} "
            f"(runtime and data {fmt_bytes(est['runtime_bytes'])}, model {fmt_bytes(est['model_bytes'])}, "
            f"activations {fmt_bytes(est['activation_bytes'] + est['cache_bytes'])}, "
            f"H and OBS {fmt_bytes(est['hessian_bytes'] + est['obs_bytes'])}, "
            f"evaluation {fmt_bytes(est['eval_bytes'])}); pruning ~{est['seconds_at_60gflops']:.0f} s of "
            f"forward/Hessian work at 60 GFLOP/s + selection")
