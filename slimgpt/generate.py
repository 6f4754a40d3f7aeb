"""Text generation: greedy or sampled, with a KV cache, streamed, with the model's chat template.

- `iter_tokens(model, ids, ...)`: the loop. With the KV cache (default) the prompt runs once
  (prefill) and every later step runs one token against the cached keys and values
  (model.KVCache); without it every step re-runs the whole sequence (the reference the cache is
  tested against: same tokens, greedy). Never past the model's context
  (max_position_embeddings); stops at an end-of-sequence id.
- `Sampling`: temperature 0 is greedy (argmax); otherwise logits / temperature, then top-k, then
  top-p (nucleus: the smallest set of most likely tokens whose probability reaches top_p), as
  transformers orders its warpers, and one draw from a `torch.Generator` seeded with `seed`: the
  same seed gives the same tokens.
- `TextStream`: incremental decoding for streamed output. It emits text only when the decoded
  tail does not end in U+FFFD, so a multi-byte character split over several byte-level tokens is
  printed once it is whole.
- `render_chat`: the chat template a checkpoint's tokenizer_config carries, rendered with jinja2
  as transformers' `apply_chat_template` does (sandboxed environment, trim_blocks, lstrip_blocks,
  loopcontrols, its `tojson` / `raise_exception` / `strftime_now`, the special tokens as
  variables, `add_generation_prompt`); the rendered text is tokenized without adding special
  tokens, as transformers does.
- `generate_text(...)`: all of it for one prompt, with timings (tokens/s).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import torch

from slimgpt.evaluate import check_logits
from slimgpt.model import KVCache


# ----------------------------------------------------------------------------------------------
# Choosing the next token

@dataclass
class Sampling:
    temperature: float = 0.0      # 0: greedy (argmax)
    top_p: float = 1.0            # 1: off
    top_k: int = 0                # 0: off
    seed: int = 0

    def validate(self) -> "Sampling":
        import math
        import numbers
        t, p, k = self.temperature, self.top_p, self.top_k
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {t!r}")
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {p!r}")
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0: off), got {k!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(int(self.seed) % 2 ** 64)


def next_token(logits: torch.Tensor, sampling: Sampling | None = None, generator: torch.Generator | None = None) -> int:
    """The next token id from the last position's logits (V,)."""
    if sampling is None or sampling.greedy:
        return int(logits.argmax())
    scores = logits.float() / sampling.temperature
    if sampling.top_k:
        kth = torch.topk(scores, min(sampling.top_k, scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        probs = sorted_scores.softmax(-1)
        before = probs.cumsum(-1) - probs                    # probability of the more likely tokens
        drop = before >= sampling.top_p
        drop[0] = False                                      # the most likely token always stays
        scores = scores.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(scores.softmax(-1), 1, generator=generator))


# ----------------------------------------------------------------------------------------------
# The loop

def max_new(model, n_prompt: int, max_new_tokens: int) -> int:
    """How many tokens may follow a prompt of n_prompt tokens: never past the context."""
    ctx = model.config.max_position_embeddings
    if n_prompt < 1:
        raise ValueError("empty prompt")
    if n_prompt >= ctx:
        raise ValueError(f"the prompt has {n_prompt} tokens; the model's context holds {ctx}")
    return max(0, min(max_new_tokens, ctx - n_prompt))


@torch.no_grad()
def iter_tokens(model, ids: list[int], max_new_tokens: int = 32, *, eos_ids=(), use_cache: bool = True,
                sampling: Sampling | None = None):
    """Yield the new token ids one by one (see the module docstring); stops after an id in
    `eos_ids` (which is yielded), after max_new_tokens, or at the context."""
    n = max_new(model, len(ids), max_new_tokens)
    if n == 0:
        return
    eos = {int(e) for e in eos_ids}
    gen = sampling.generator() if sampling is not None and not sampling.greedy else None
    p = next(model.parameters())
    dev = p.device
    x = torch.tensor([ids], dtype=torch.long, device=dev)
    cache = KVCache(model.config, len(ids) + n, device=dev, dtype=p.dtype) if use_cache else None
    logits = model(x, cache, last_only=True)[0, -1]
    check_logits(logits, model, x)
    for step in range(n):
        tok = next_token(logits, sampling, gen)
        yield tok
        if tok in eos or step == n - 1:
            return
        nxt = torch.tensor([[tok]], dtype=torch.long, device=dev)
        if cache is not None:
            logits = model(nxt, cache, last_only=True)[0, -1]
        else:
            x = torch.cat([x, nxt], dim=1)
            logits = model(x, last_only=True)[0, -1]


def generate_ids(model, ids: list[int], max_new_tokens: int = 32, stop_at_eos: bool = True, *,
                 use_cache: bool = True, sampling: Sampling | None = None, eos_ids=None) -> list[int]:
    """The continuation of the token ids `ids` (new ids only; greedy unless `sampling`), never
    past the context. `eos_ids` default: the config's eos_token_id."""
    if eos_ids is None:
        eos_ids = [] if model.config.eos_token_id is None else [model.config.eos_token_id]
    return list(iter_tokens(model, ids, max_new_tokens, eos_ids=eos_ids if stop_at_eos else (),
                            use_cache=use_cache, sampling=sampling))


# ----------------------------------------------------------------------------------------------
# Streaming text

class TextStream:
    """Decode token ids as they come, without splitting a multi-byte character.

    push(id) returns the text that became final with this token ("" while a character is still
    incomplete: the decoded tail ends in U+FFFD); flush() returns what is left. The pieces
    joined equal the decode of all ids."""

    def __init__(self, tokenizer, skip_special_tokens: bool = False):
        self.tok, self.skip = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self.prefix = self.read = 0          # ids[prefix:read] decode to text already emitted

    def _decode(self, ids) -> str:
        return self.tok.decode(ids, skip_special_tokens=self.skip)

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        done = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        if len(text) > len(done) and not text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(done):]
        return ""

    def flush(self) -> str:
        done = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return text[len(done):]


# ----------------------------------------------------------------------------------------------
# Chat templates

class ChatTemplateError(ValueError):
    """No chat template, or one that does not render (one line)."""


def chat_template_of(tokenizer_config: dict, name: str = "default") -> str:
    """The chat template string of a tokenizer_config (a string, or transformers' list of named
    templates, of which `name`)."""
    ct = (tokenizer_config or {}).get("chat_template")
    if isinstance(ct, list):
        named = {t.get("name"): t.get("template") for t in ct if isinstance(t, dict)}
        if name not in named:
            raise ChatTemplateError(f"the tokenizer has chat templates {sorted(map(str, named))} but none named {name!r}")
        ct = named[name]
    if not isinstance(ct, str) or not ct.strip():
        raise ChatTemplateError("the model has no chat template (tokenizer_config.json has no chat_template); "
                                "run without --chat")
    return ct


def _environment():
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ChatTemplateError("chat templates need jinja2: pip install 'jinja2>=3.1.6'") from None
    version = tuple(int(p) if p.isdigit() else 0 for p in jinja2.__version__.split(".")[:3])
    if version < (3, 1, 6):          # earlier versions have known sandbox escapes; templates are untrusted
        raise ChatTemplateError(f"chat templates need jinja2 >= 3.1.6 (found {jinja2.__version__}): "
                                "pip install -U jinja2")

    class Generation(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask tag): renders its body."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        from datetime import datetime
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def special_tokens(tokenizer_config: dict) -> dict:
    """{bos_token, eos_token, unk_token, pad_token}: the strings a template may use (transformers
    passes its special_tokens_map)."""
    from slimgpt.loaders.validate import SPECIAL_TOKENS, special_token
    out = {}
    for name in SPECIAL_TOKENS:
        v = special_token(tokenizer_config or {}, name)
        if v is not None:
            out[name] = v
    return out


def render_chat(tokenizer_config: dict, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The prompt text of `messages` ([{"role": "user", "content": "..."}, ...]) in the chat
    template of `tokenizer_config`, rendered as transformers renders it."""
    template = chat_template_of(tokenizer_config)
    env = _environment()
    import jinja2
    try:
        return env.from_string(template).render(messages=messages, tools=None, documents=None,
                                                add_generation_prompt=add_generation_prompt,
                                                **special_tokens(tokenizer_config))
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"the chat template failed to render ({type(e).__name__}: "
                                f"{' '.join(str(e).split())})") from None
    except Exception as e:  # noqa: BLE001 - a template may fail in any way (it is untrusted text)
        raise ChatTemplateError(f"the chat template failed to render ({type(e).__name__}: "
                                f"{' '.join(str(e).split())})") from None


# ----------------------------------------------------------------------------------------------
# One prompt, end to end

def eos_ids_of(model, tokenizer, tokenizer_config: dict | None = None, generation_config: dict | None = None) -> list[int]:
    """Ids that end generation: config.eos_token_id, generation_config's eos_token_id (an id or a
    list: LLaMA-3 instruct models list several) and tokenizer_config's eos_token."""
    ids = []
    if model.config.eos_token_id is not None:
        ids.append(int(model.config.eos_token_id))
    v = (generation_config or {}).get("eos_token_id")
    ids += [int(x) for x in (v if isinstance(v, list) else [v] if v is not None else [])]
    tok = special_tokens(tokenizer_config or {}).get("eos_token")
    if tok is not None and tokenizer is not None and tokenizer.token_to_id(tok) is not None:
        ids.append(tokenizer.token_to_id(tok))
    return sorted(set(ids))


def prompt_ids(tokenizer, text: str, tokenizer_config: dict | None = None, chat: bool = False) -> list[int]:
    """Token ids of a prompt: no special tokens added, except a BOS before a plain prompt when
    tokenizer_config says add_bos_token (a chat template writes its own)."""
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    tc = tokenizer_config or {}
    bos = special_tokens(tc).get("bos_token")
    if not chat and tc.get("add_bos_token") is True and bos is not None:
        bos_id = tokenizer.token_to_id(bos)
        if bos_id is not None and ids[:1] != [bos_id]:
            ids = [bos_id] + ids
    return ids


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 32, *, chat: bool = False,
                  tokenizer_config: dict | None = None, generation_config: dict | None = None,
                  sampling: Sampling | None = None, use_cache: bool = True, stop_at_eos: bool = True,
                  on_text=None) -> dict:
    """Generate a continuation of `prompt` (with `chat`: the assistant's answer to it as a user
    message, in the model's chat template). `on_text(piece)` receives the text as it comes.

    Returns {"completion" (text, without the end-of-sequence token), "prompt_text" (what the
    model saw), "prompt_tokens", "new_tokens", "stop" ("eos" | "max_new_tokens" | "context"),
    "seconds", "first_token_seconds", "tokens_per_second", "decode_tokens_per_second", "ids"}."""
    sampling = (sampling or Sampling()).validate()
    text = render_chat(tokenizer_config or {}, [{"role": "user", "content": prompt}]) if chat else prompt
    ids = prompt_ids(tokenizer, text, tokenizer_config, chat)
    if not ids:
        raise ValueError("the prompt is empty (no tokens)")
    eos = eos_ids_of(model, tokenizer, tokenizer_config, generation_config) if stop_at_eos else []
    limit = max_new(model, len(ids), max_new_tokens)
    stream, new, pieces = TextStream(tokenizer), [], []
    t0 = time.perf_counter()
    t_first = None
    for tok in iter_tokens(model, ids, max_new_tokens, eos_ids=eos, use_cache=use_cache, sampling=sampling):
        if t_first is None:
            t_first = time.perf_counter() - t0
        new.append(tok)
        if tok in eos:
            break
        piece = stream.push(tok)
        if piece:
            pieces.append(piece)
            if on_text is not None:
                on_text(piece)
    seconds = time.perf_counter() - t0
    rest = stream.flush()
    if rest:
        pieces.append(rest)
        if on_text is not None:
            on_text(rest)
    stop = "eos" if new and new[-1] in eos else ("max_new_tokens" if limit == max_new_tokens else "context")
    decode = seconds - (t_first or 0.0)
    return {"completion": "".join(pieces), "prompt_text": text, "prompt_tokens": len(ids), "new_tokens": len(new),
            "stop": stop, "seconds": seconds, "first_token_seconds": t_first or 0.0,
            "tokens_per_second": len(new) / seconds if seconds > 0 else 0.0,
            "decode_tokens_per_second": (len(new) - 1) / decode if len(new) > 1 and decode > 0 else 0.0,
            "ids": new, "cache": use_cache}


def generate(model, tokenizer, prompt: str, max_new_tokens: int = 32, stop_at_eos: bool = True, **kw) -> str:
    """The continuation of `prompt` (decoded text of the new tokens only; greedy unless `sampling`)."""
    return generate_text(model, tokenizer, prompt, max_new_tokens, stop_at_eos=stop_at_eos, **kw)["completion"]
