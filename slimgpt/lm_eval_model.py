"""lm-evaluation-harness adapter: evaluate slimgpt models (pruned checkpoints included) with lm-eval.

    pip install "lm-eval>=0.4"
    python -m slimgpt.lm_eval_model run --model slimgpt --model_args pretrained=pruned-smollm2 \\
        --tasks arc_easy --batch_size 8

    import lm_eval, slimgpt.lm_eval_model            # the import registers "slimgpt"
    lm_eval.simple_evaluate(model="slimgpt", model_args="pretrained=pruned-smollm2", tasks=["arc_easy"])

lm-eval 0.4 finds models only in its own registry, and it has no plug-in discovery: the
`lm_eval` command cannot see a model defined in another package. `python -m slimgpt.lm_eval_model`
is the `lm_eval` command with this module imported first (same arguments). An exported HF
folder (`slimgpt export --format hf`) also runs under lm-eval's own `--model hf`
(`--model_args pretrained=DIR,trust_remote_code=True` for a per-layer export).

`pretrained` is anything `slimgpt.loaders.load_model` takes: a checkpoint folder, an HF-style
folder, `smollm2-135m`, a tiny test model. The model runs in slimgpt's own torch code.

- loglikelihood: the context and continuation are tokenized together and split as lm-eval's
  HF model does (TemplateLM._encode_pair: trailing spaces of the context move to the
  continuation); an empty context is replaced by the prefix token (BOS if the model has one,
  else EOS, as `--model hf`). Sequences longer than `max_length` keep their last tokens.
  Requests are batched longest first, right-padded (causal attention: padding after a sequence
  never changes its logits), with at most `batch_tokens` tokens per forward.
- loglikelihood_rolling: lm-eval's rolling windows of `max_length` tokens, prefix token first.
- generate_until: greedy decoding with slimgpt's KV cache (slimgpt.generate.iter_tokens),
  stopped at any `until` string, at EOS or after `max_gen_toks` tokens; sampling arguments are
  ignored (a warning says so).
- apply_chat_template: the checkpoint's chat template when it has one, rendered as transformers
  does (slimgpt.generate.render_chat).
"""
from __future__ import annotations

import logging
import warnings

import lm_eval.models  # noqa: F401 - lm-eval fills its registry only when it is empty: fill it first
import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _int_or(v, default):
    if v is None or v == "" or (isinstance(v, str) and v.startswith("auto")):
        return default
    return int(v)


@register_model("slimgpt")
class SlimGPTLM(TemplateLM):
    """A slimgpt model behind lm-eval's LM interface (see the module docstring)."""

    def __init__(self, pretrained: str = "smollm2-135m", batch_size=8, max_length=None, max_gen_toks: int = 256,
                 batch_tokens: int = 8192, device: str = "cpu", dtype: str = "float32", prefix_token_id=None,
                 threads=None, model=None, tokenizer=None, max_batch_size=None, **kwargs):
        super().__init__()
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if kwargs:
            log.warning("slimgpt: ignoring model arguments %s", sorted(kwargs))
        if threads:
            torch.set_num_threads(int(threads))
        self.pretrained = str(pretrained)
        if model is None:
            from slimgpt.loaders import load_model

            loaded = load_model(self.pretrained)
            model, tokenizer = loaded.model, loaded.tokenizer
        if tokenizer is None:
            raise ValueError(f"{pretrained}: the model has no tokenizer (tokenizer.json)")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        device = str(device or "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            log.warning("slimgpt: CUDA is not available; running on the CPU")
            device = "cpu"
        self._device = torch.device(device)
        self.model = model.to(self._device, _DTYPES[dtype]).eval()
        self.tokenizer = tokenizer
        self.batch_size = max(1, _int_or(batch_size, 8))
        self.batch_tokens = max(1, int(batch_tokens))
        cfg = self.model.config
        self._max_length = _int_or(max_length, cfg.max_position_embeddings)
        self.max_gen_toks = int(max_gen_toks)
        self._meta = self._metadata()
        ids = self._meta.get("ids", {})
        self._eos = ids.get("eos", cfg.eos_token_id)
        self._bos = ids.get("bos", cfg.bos_token_id)
        if prefix_token_id is not None:
            self._prefix = int(prefix_token_id)
        else:
            self._prefix = self._bos if self._bos is not None else self._eos
        if self._prefix is None:
            self._prefix = 0
            log.warning("slimgpt: the model has no BOS/EOS token; empty contexts are conditioned on token 0 "
                        "(set prefix_token_id=... to choose another)")

    def _metadata(self) -> dict:
        """Special tokens and chat template, read as `slimgpt export` reads them."""
        import os
        from pathlib import Path

        if not os.path.isdir(self.pretrained):
            return {}
        try:
            from slimgpt import paths
            from slimgpt.export.common import Source, tokenizer_meta

            manifest = paths.read_json(Path(self.pretrained) / "manifest.json") or {}
            return tokenizer_meta(Source(Path(self.pretrained), self.model, self.tokenizer, manifest))
        except Exception:      # noqa: BLE001 - metadata is optional
            return {}

    # ------------------------------------------------------------------------------------------
    # properties lm-eval reads

    @property
    def eot_token_id(self):
        return self._eos if self._eos is not None else self._prefix

    @property
    def prefix_token_id(self):
        return self._prefix

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self):
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return self.pretrained.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens=None, left_truncate_len=None, **kwargs) -> list[int]:
        ids = self.tokenizer.encode(string, add_special_tokens=False).ids
        if left_truncate_len:
            ids = ids[-left_truncate_len:]
        return ids

    def tok_decode(self, tokens, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------------------------------
    # scoring

    @torch.no_grad()
    def _forward(self, seqs: list[list[int]]) -> torch.Tensor:
        """Logits (B, T, V) of right-padded sequences, float32 on the CPU side of the device."""
        T = max(len(s) for s in seqs)
        x = torch.zeros(len(seqs), T, dtype=torch.long)
        for b, s in enumerate(seqs):
            x[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        return self.model(x.to(self._device))

    def _batches(self, order, lengths):
        """Consecutive chunks of `order` (sorted longest first) within batch_size and batch_tokens."""
        batch, width = [], 0
        for i in order:
            w = max(width, lengths[i])
            if batch and (len(batch) >= self.batch_size or w * (len(batch) + 1) > self.batch_tokens):
                yield batch
                batch, w = [], lengths[i]
            batch.append(i)
            width = w
        if batch:
            yield batch

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        """[(sum log p(continuation | context), continuation is the greedy choice)] for
        requests ((context, continuation) or None, context ids, continuation ids)."""
        n = len(requests)
        inputs, n_cont = [], []
        for _, ctx, cont in requests:
            if not cont:
                raise ValueError("an empty continuation cannot be scored")
            whole = (list(ctx) + list(cont))[-(self.max_length + 1):]
            inputs.append(whole[:-1])
            n_cont.append(min(len(cont), len(whole) - 1))
        targets = [(list(ctx) + list(cont))[-k:] for (_, ctx, cont), k in zip(requests, n_cont)]
        lengths = [len(s) for s in inputs]
        order = sorted(range(n), key=lambda i: (-lengths[i], i))
        out = [None] * n
        pbar = tqdm(total=n, disable=disable_tqdm, desc="slimgpt loglikelihood")
        for batch in self._batches(order, lengths):
            logits = self._forward([inputs[i] for i in batch])
            for b, i in enumerate(batch):
                L, k = lengths[i], n_cont[i]
                lp = F.log_softmax(logits[b, L - k: L].float(), dim=-1)
                tgt = torch.tensor(targets[i], device=lp.device)
                ll = float(lp.gather(1, tgt[:, None]).sum())
                greedy = bool((lp.argmax(-1) == tgt).all())
                out[i] = (ll, greedy)
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], out[i])
            pbar.update(len(batch))
            del logits
        pbar.close()
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval import utils

        out = []
        for req in tqdm(requests, disable=disable_tqdm, desc="slimgpt loglikelihood_rolling"):
            (string,) = req.args
            windows = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            lls = self._loglikelihood_tokens([(None, c, t) for c, t in windows], disable_tqdm=True)
            total = sum(ll for ll, _ in lls)
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
        return out

    # ------------------------------------------------------------------------------------------
    # generation

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from slimgpt.generate import iter_tokens

        out = []
        warned = False
        for req in tqdm(requests, disable=disable_tqdm, desc="slimgpt generate_until"):
            context, gen_kwargs = req.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            if isinstance(until, str):
                until = [until]
            until = [u for u in until if u]
            max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            if (gen_kwargs.get("do_sample") or (gen_kwargs.get("temperature") or 0) > 0) and not warned:
                warnings.warn("slimgpt's lm-eval adapter decodes greedily; sampling arguments are ignored",
                              stacklevel=2)
                warned = True
            ids = self.tok_encode(context)[-max(1, self.max_length - max_new):] or [self.prefix_token_id]
            new: list[int] = []
            eos = [] if self._eos is None else [self._eos]
            for tok in iter_tokens(self.model, ids, max_new, eos_ids=eos, use_cache=True):   # greedy, KV cache
                if tok in eos:
                    break
                new.append(tok)
                if until and any(u in self.tok_decode(new) for u in until):
                    break
            text = self.tok_decode(new)
            for u in until:
                text = text.split(u)[0]
            out.append(text)
            self.cache_hook.add_partial("generate_until", (context, req.args[1]), text)
        return out

    # ------------------------------------------------------------------------------------------
    # chat

    def chat_template(self, chat_template=False):
        if not chat_template:
            return None
        return self._meta.get("chat_template")

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        if not self._meta.get("chat_template"):
            raise ValueError(f"{self.pretrained}: no chat template is known for this model")
        from slimgpt.generate import render_chat

        tc = {f"{k}_token": v for k, v in self._meta.get("tokens", {}).items()}
        tc["chat_template"] = self._meta["chat_template"]
        return render_chat(tc, chat_history, add_generation_prompt=add_generation_prompt)


def main(argv=None) -> None:
    """The `lm_eval` command with the "slimgpt" model registered (python -m slimgpt.lm_eval_model ...)."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0]] + list(argv)
    cli_evaluate()


if __name__ == "__main__":
    main()
