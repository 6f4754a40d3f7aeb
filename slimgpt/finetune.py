"""Recovery fine-tuning of a pruned model: LoRA through `peft`, then merged. Beyond the paper.

SlimGPT (and LLM-Pruner) report a "w/ tune" row: the pruned model after a short LoRA
fine-tune. This module does that on the CPU for models of SmolLM2's size:

    slimgpt finetune pruned-smollm2 --out recovered --steps 200 --rank 8 --lr 5e-4

- Data: the packaged C4 calibration pool (documents 1000-1999, `slimgpt.textdata`), one token
  stream; its last `val_fraction` is held out for a validation loss, training windows of
  `seqlen` tokens are drawn from the rest with starts from `random.Random(seed)`. WikiText-2
  test (the evaluation split) is never trained on: `--calib PATH` takes a text or JSON-lines
  file instead of C4 and is refused when it contains WikiText-2 test passages.
- Model: LoRA adapters (rank r, alpha 2r by default) on q/k/v/o and gate/up/down of every
  layer (`peft.inject_adapter_in_model` on the plain `nn.Module`); everything else frozen.
  AdamW, linear warm-up then cosine decay, gradient clipping 1.0, micro-batches of
  `micro_batch` windows with gradient accumulation to `batch` windows per step.
- Result: the adapters are merged into the weights (W += B·A·alpha/r) and removed, so the
  model is again a plain slimgpt model of the same shapes (same parameter count), written with
  `slimgpt.checkpoint.save_pretrained` (atomic, through the output guard) with the source
  manifest plus a "finetune" record (settings, steps, tokens, losses, wall time, PPL).

peft is an optional dependency (`pip install 'slimgpt[finetune]'`); without it `slimgpt
finetune` stops with one line. Deterministic for a given seed and thread count.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PEFT_MISSING = "peft is not installed: install the optional extra with pip install 'slimgpt[finetune]' (or pip install peft)"


class FinetuneError(ValueError):
    """Bad fine-tuning settings or data (one clear message)."""


@dataclass
class FinetuneSettings:
    steps: int = 200
    rank: int = 8
    alpha: float | None = None          # LoRA scale alpha / rank; None: 2 · rank
    lr: float = 5e-4
    batch: int = 4                      # windows per optimizer step
    micro_batch: int = 1                # windows per forward/backward (gradient accumulation)
    seqlen: int = 512
    seed: int = 0
    warmup: int | None = None           # warm-up steps; None: 5% of steps (at least 1)
    weight_decay: float = 0.0
    dropout: float = 0.0
    grad_clip: float = 1.0
    val_fraction: float = 0.02          # tail of the token stream held out for the validation loss
    val_windows: int = 8
    targets: tuple = TARGETS
    distill: float = 1.0                # with a teacher: weight of KL(teacher ‖ model) (the rest: next-token CE)
    temperature: float = 1.0            # distillation temperature
    log_every: int = 10

    def validate(self):
        for name in ("steps", "rank", "batch", "micro_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise FinetuneError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.seqlen < 2:
            raise FinetuneError(f"--seqlen must be at least 2, got {self.seqlen}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise FinetuneError(f"--lr must be a positive number, got {self.lr}")
        if self.alpha is not None and not self.alpha > 0:
            raise FinetuneError(f"--alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1 or self.weight_decay < 0 or self.grad_clip < 0:
            raise FinetuneError("dropout must be in [0, 1), weight decay and grad clip >= 0")
        if not 0 < self.val_fraction < 0.5 or self.val_windows < 0:
            raise FinetuneError("val_fraction must be in (0, 0.5) and val_windows >= 0")
        if not 0 <= self.distill <= 1 or not self.temperature > 0:
            raise FinetuneError("distill must be in [0, 1] and temperature > 0")
        if not self.targets or any(t not in TARGETS for t in self.targets):
            raise FinetuneError(f"LoRA targets must be among {TARGETS}, got {self.targets}")


def require_peft():
    """The peft module, or a RuntimeError with one clear line."""
    try:
        import peft
    except ImportError:
        raise RuntimeError(PEFT_MISSING) from None
    return peft


# ----------------------------------------------------------------------------------------------
# Data

def c4_stream(tokenizer) -> torch.Tensor:
    """The packaged C4 calibration pool (documents 1000-1999) as one token stream."""
    from slimgpt.textdata import c4_calibration_tokens
    return c4_calibration_tokens(tokenizer)


def text_stream(tokenizer, path: str) -> torch.Tensor:
    """Tokens of a UTF-8 text file (.txt) or JSON lines with a "text" field (.jsonl[.gz]),
    refused when it is, or contains passages of, the WikiText-2 test split."""
    import gzip

    from slimgpt.textdata import WIKITEXT2_TEST, encode

    if os.path.realpath(path) == os.path.realpath(WIKITEXT2_TEST):
        raise FinetuneError(f"{path} is the WikiText-2 test split, the evaluation data: not for training")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        if ".jsonl" in path:
            text = "".join(json.loads(line)["text"] + "\n\n" for line in f if line.strip())
        else:
            text = f.read()
    check_not_evaluation(text, path)
    ids = encode(tokenizer, text)
    if ids.numel() == 0:
        raise FinetuneError(f"{path}: no tokens")
    return ids


def check_not_evaluation(text: str, what: str = "the training text", n_probes: int = 200) -> None:
    """Refuse training text that contains WikiText-2 test passages: `n_probes` evenly spaced
    80-character snippets of the test split's prose lines are looked up; two or more hits stop."""
    from slimgpt.textdata import wikitext2_text

    lines = [ln.strip() for ln in wikitext2_text().split("\n") if len(ln.strip()) > 200 and not ln.strip().startswith("=")]
    if not lines:
        return
    step = max(1, len(lines) // n_probes)
    probes = [ln[40:120] for ln in lines[::step][:n_probes]]
    hits = sum(1 for p in probes if p in text)
    if hits >= 2:
        raise FinetuneError(f"{what} contains WikiText-2 test passages ({hits} of {len(probes)} probes): the "
                            "evaluation split must not be trained on")


def split_stream(ids: torch.Tensor, s: FinetuneSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) parts of a token stream: the last val_fraction is held out."""
    n_val = max(int(len(ids) * s.val_fraction), s.seqlen + 1 if s.val_windows else 0)
    train = ids[: len(ids) - n_val]
    if len(train) < s.seqlen + 1:
        raise FinetuneError(f"the training text has {len(ids)} tokens: too few for windows of {s.seqlen} "
                            f"(with {s.val_fraction:.0%} held out)")
    return train, ids[len(ids) - n_val:]


def _windows(stream: torch.Tensor, seqlen: int, starts) -> torch.Tensor:
    return torch.stack([stream[a:a + seqlen] for a in starts])


# ----------------------------------------------------------------------------------------------
# LoRA

def add_lora(model, s: FinetuneSettings):
    """Inject LoRA adapters (seeded) and freeze everything else; returns the trainable params."""
    peft = require_peft()
    cfg = peft.LoraConfig(r=s.rank, lora_alpha=s.alpha if s.alpha is not None else 2 * s.rank,
                          lora_dropout=s.dropout, target_modules=list(s.targets), bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        peft.inject_adapter_in_model(cfg, model)
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
        if "lora_" in name:
            trainable.append(p)
    return trainable


@torch.no_grad()
def merge_lora(model) -> int:
    """Merge every LoRA adapter into its base Linear and put the base Linear back; returns the
    number of merged layers. The model is then a plain slimgpt model again."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], module.get_base_layer())
            merged += 1
    for p in model.parameters():
        p.requires_grad_(False)
    return merged


# ----------------------------------------------------------------------------------------------
# Training

def _loss(model, ids: torch.Tensor, teacher=None, s: FinetuneSettings | None = None) -> torch.Tensor:
    """Next-token cross-entropy; with a teacher, (1 − distill) · CE + distill · T² · KL(teacher ‖ model)
    on the temperature-T distributions of every position (knowledge distillation)."""
    logits = model(ids)
    V = logits.shape[-1]
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), ids[:, 1:].reshape(-1))
    if teacher is None or s is None or s.distill == 0:
        return ce
    with torch.no_grad():
        t_logits = teacher(ids)
    T = s.temperature
    kl = F.kl_div(F.log_softmax(logits.reshape(-1, V).float() / T, -1), F.log_softmax(t_logits.reshape(-1, V).float() / T, -1),
                  reduction="batchmean", log_target=True) * T * T
    return (1 - s.distill) * ce + s.distill * kl


@torch.no_grad()
def _val_loss(model, val: torch.Tensor, s: FinetuneSettings) -> float | None:
    n = min(s.val_windows, (len(val) - 1) // s.seqlen)
    if n < 1:
        return None
    wins = val[: n * s.seqlen].view(n, s.seqlen)
    return float(sum(float(_loss(model, wins[i:i + 1])) for i in range(n)) / n)


def lr_at(step: int, s: FinetuneSettings) -> float:
    """Linear warm-up to lr, then cosine decay to 10% of lr (step counts from 0)."""
    warm = s.warmup if s.warmup is not None else max(1, round(0.05 * s.steps))
    if step < warm:
        return s.lr * (step + 1) / warm
    t = (step - warm) / max(1, s.steps - warm)
    return s.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def _training_tokens(model, tokenizer, tokens, teacher, s: FinetuneSettings) -> torch.Tensor:
    """The checked 1-D training stream (default: the packaged C4 pool through `tokenizer`); the
    teacher, when given, is checked and frozen."""
    if tokens is None:
        if tokenizer is None:
            raise FinetuneError("give a tokenizer (for the C4 calibration pool) or a token stream")
        tokens = c4_stream(tokenizer)
    tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
    ctx = model.config.max_position_embeddings
    if s.seqlen > ctx:
        raise FinetuneError(f"--seqlen {s.seqlen} is longer than the model's context ({ctx})")
    if int(tokens.max()) >= model.config.vocab_size:
        raise FinetuneError("the training tokens hold ids beyond the model's vocabulary")
    if teacher is not None:
        if teacher.config.vocab_size != model.config.vocab_size:
            raise FinetuneError("the teacher's vocabulary differs from the model's")
        for p in teacher.parameters():
            p.requires_grad_(False)
    return tokens


def finetune(model, tokenizer=None, settings: FinetuneSettings | None = None, *, tokens: torch.Tensor | None = None,
             teacher=None, log=None, progress: bool = False) -> dict:
    """LoRA-fine-tune `model` in place on `tokens` (a 1-D stream; default: the packaged C4
    calibration pool through `tokenizer`), merge the adapters, and return a record: settings,
    steps, tokens, seconds, per-step losses, validation loss (next-token CE) before and after.

    With `teacher` (e.g. the dense model the pruned one came from, same tokenizer), the loss is
    knowledge distillation toward the teacher's next-token distributions (settings.distill,
    settings.temperature) instead of plain next-token CE on the text."""
    s = settings or FinetuneSettings()
    s.validate()
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    tokens = _training_tokens(model, tokenizer, tokens, teacher, s)
    train, val = split_stream(tokens, s)
    require_peft()
    rng = random.Random(s.seed)
    n_starts = len(train) - s.seqlen
    t0 = time.perf_counter()
    was_training = model.training
    with torch.enable_grad():
        params = add_lora(model, s)
        n_trainable = sum(p.numel() for p in params)
        try:
            model.eval()                     # no dropout in the model itself; LoRA dropout is explicit
            val_before = _val_loss(model, val, s)
            opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
            losses = []
            it = range(s.steps)
            if progress:
                from tqdm import tqdm
                it = tqdm(it, desc="finetune", unit="step", file=sys.stderr)
            t_train = time.perf_counter()
            for step in it:
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, s)
                batch = _windows(train, s.seqlen, [rng.randrange(n_starts + 1) for _ in range(s.batch)])
                total = 0.0
                for mb in batch.split(s.micro_batch):
                    loss = _loss(model, mb, teacher, s) * (mb.shape[0] / s.batch)
                    loss.backward()
                    total += float(loss.detach())
                if not math.isfinite(total):
                    raise FloatingPointError(f"finetune: the loss became non-finite at step {step + 1}; "
                                             "lower --lr")
                if s.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(total)
                if (step + 1) % s.log_every == 0 or step + 1 == s.steps:
                    el = time.perf_counter() - t_train
                    recent = losses[-s.log_every:]
                    log(f"step {step + 1}/{s.steps}  loss {sum(recent) / len(recent):.4f}  lr {lr_at(step, s):.2e}  "
                        f"{(step + 1) * s.batch * s.seqlen / el:.0f} tok/s  eta {el / (step + 1) * (s.steps - step - 1):.0f} s")
            seconds_train = time.perf_counter() - t_train
            merged = merge_lora(model)
        except BaseException:
            merge_lora(model)                # leave a plain model behind even on failure
            raise
    val_after = _val_loss(model, val, s)
    model.train(was_training)
    rec = {"settings": asdict(s), "steps": s.steps, "tokens": s.steps * s.batch * s.seqlen,
           "trainable_params": n_trainable, "merged_layers": merged, "seconds": time.perf_counter() - t0,
           "seconds_train": seconds_train, "losses": losses, "val_loss_before": val_before,
           "val_loss_after": val_after, "train_tokens_available": len(train), "val_tokens": len(val)}
    if val_before is not None:
        log(f"validation loss {val_before:.4f} -> {val_after:.4f} ({len(val)} held-out tokens); "
            f"{rec['tokens']:,} training tokens in {seconds_train:.0f} s")
    return rec


# ----------------------------------------------------------------------------------------------
# Command line: slimgpt finetune DIR --out DST

def add_finetune_subcommand(sub) -> argparse.ArgumentParser:
    d = FinetuneSettings()
    p = sub.add_parser("finetune", help="LoRA recovery fine-tuning of a (pruned) model, merged and saved",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a slimgpt checkpoint folder (or any model slimgpt loads)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--rank", type=int, default=d.rank, help=f"LoRA rank (default {d.rank})")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default 2 x rank)")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr:g})")
    p.add_argument("--batch", type=int, default=d.batch, help=f"windows per step (default {d.batch})")
    p.add_argument("--micro-batch", type=int, default=d.micro_batch, help="windows per forward/backward")
    p.add_argument("--seqlen", type=int, default=d.seqlen, help=f"training window length (default {d.seqlen})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--teacher", default=None,
                   help="distil from this model (e.g. the dense model the pruned one came from: smollm2-135m) "
                        "instead of plain next-token CE on the text")
    p.add_argument("--distill", type=float, default=d.distill,
                   help="with --teacher: weight of the distillation term (the rest: next-token CE; default 1)")
    p.add_argument("--calib", default="c4", help="training text: c4 (the packaged calibration pool, docs "
                                                "1000-1999; default) or a .txt / .jsonl[.gz] file")
    p.add_argument("--eval-tokens", type=int, default=4096,
                   help="WikiText-2 tokens for the PPL before and after (0: skip; default 4096)")
    p.add_argument("--eval-seqlen", type=int, default=128)
    p.add_argument("--force", action="store_true", help="replace an earlier slimgpt output at --out")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar or step log")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def cmd_finetune(a) -> dict:
    from slimgpt.checkpoint import check_output_dir, save_pretrained
    from slimgpt.evaluate import wikitext2_perplexity
    from slimgpt.loaders import load_model
    from slimgpt import paths

    s = FinetuneSettings(steps=a.steps, rank=a.rank, alpha=a.alpha, lr=a.lr, batch=a.batch,
                         micro_batch=a.micro_batch, seqlen=a.seqlen, seed=a.seed, distill=a.distill)
    s.validate()
    require_peft()
    if a.eval_tokens < 0 or a.eval_seqlen < 2:
        raise FinetuneError("--eval-tokens must be >= 0 and --eval-seqlen >= 2")
    out = check_output_dir(a.out, a.force, inputs=(a.model,) + ((a.teacher,) if a.teacher else ()))
    t0 = time.perf_counter()
    loaded = load_model(a.model)
    model, tok = loaded.model, loaded.tokenizer
    if tok is None:
        raise FinetuneError(f"{a.model}: no tokenizer.json, cannot tokenize the training text")
    tokens = c4_stream(tok) if a.calib == "c4" else text_stream(tok, a.calib)
    teacher = None
    if a.teacher is not None:
        t_loaded = load_model(a.teacher)
        teacher = t_loaded.model
        if t_loaded.tokenizer is not None and t_loaded.tokenizer.to_str() != tok.to_str():
            raise FinetuneError(f"--teacher {a.teacher} has another tokenizer than {a.model}")
    log = (lambda m: None) if a.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    report = {"command": "finetune", "model": loaded.source, "out": str(out), "params": model.num_parameters(),
              "data": "c4 sample docs 1000-1999 (slimgpt/data/c4)" if a.calib == "c4" else a.calib}
    if a.eval_tokens > 0:
        with torch.no_grad():
            r = wikitext2_perplexity(model, tok, a.eval_seqlen, a.eval_tokens, progress=not a.quiet)
        report["before"] = r
        log(f"before PPL {r['ppl']:.3f}  (WikiText-2 test, {r['tokens']} tokens, seqlen {a.eval_seqlen})")
    rec = finetune(model, tok, s, tokens=tokens, teacher=teacher, log=log, progress=not a.quiet)
    rec["teacher"] = a.teacher
    report["finetune"] = rec
    if a.eval_tokens > 0:
        with torch.no_grad():
            r = wikitext2_perplexity(model, tok, a.eval_seqlen, a.eval_tokens, progress=not a.quiet)
        report["after"] = r
        log(f"after  PPL {r['ppl']:.3f}  (same tokens)")
    src = paths.read_json(os.path.join(a.model, "manifest.json")) if os.path.isdir(a.model) else None
    manifest = dict(src) if isinstance(src, dict) else {"source_model": loaded.source}
    for k in ("format", "files", "versions"):
        manifest.pop(k, None)
    manifest["finetune"] = {"source": loaded.source, "data": report["data"],
                            **{k: v for k, v in rec.items() if k != "losses"},
                            "loss_first": rec["losses"][0], "loss_last": rec["losses"][-1],
                            "eval": {k: report[k] for k in ("before", "after") if k in report}}
    save_pretrained(model, out, tok, manifest, force=a.force, inputs=(a.model,))
    report["seconds_total"] = time.perf_counter() - t0
    log(f"saved {out}: {rec['steps']} steps, {rec['tokens']:,} tokens, {rec['seconds']:.0f} s fine-tuning, "
        f"{report['seconds_total']:.0f} s in all")
    return report


def run(args) -> int:
    """Run a parsed `slimgpt finetune`; expected failures are one line on stderr and exit 2."""
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = cmd_finetune(args)
    except KeyboardInterrupt:
        print("slimgpt finetune: interrupted; nothing was saved", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError, FloatingPointError, MemoryError) as e:
        if args.debug:
            raise
        print(f"slimgpt finetune: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "finetune"} |
                         {"finetune": {k: v for k, v in report["finetune"].items() if k != "losses"}}, default=str))
    return 0


__all__ = ["FinetuneSettings", "FinetuneError", "add_lora", "merge_lora", "finetune", "check_not_evaluation",
           "add_finetune_subcommand", "run", "PEFT_MISSING"]
