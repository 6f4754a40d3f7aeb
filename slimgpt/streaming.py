"""Layer streaming: prune a model larger than memory, one decoder layer at a time, resumably.

What this is: the streaming twin of `pipeline.prune_model`, sharing its set-up, layer loop and
summary (pipeline.setup / prune_layers / summarize). Per layer: load it (float32, on the
device) from the input → the quick dense perplexity's hidden states pass through it → calibrate,
prune and shrink it (pipeline.prune_layer) → the pruned perplexity's hidden states pass through
it → write it, in the save dtype, as its own safetensors shard → commit the state → free it.

Memory: one layer in float32, its statistics (H in float64 and the core's float32 copy), the
calibration activations at the layer boundary (`activations.Resident` on the device, or
`activations.OnDisk`: two slot files read and written per batch), the caches of A and F when
they fit `cache_mb`, and the evaluation's hidden states (2 × eval tokens × D float32). The
embedding is read once for the layer-0 inputs, the final norm and lm_head once at the end.

State and resume: everything lives in a hidden folder beside --out, `.NAME.resume/`, marked by
`.slimgpt-resume` (format, version and the pid of the run using it; paths.clean_stale leaves it
alone since it is not a temporary of an interrupted write, and a run without --resume removes it
as slimgpt's own and starts over):

    state.json                 fingerprint (settings, input, calibration, dtype, eval, ranks), plan,
                               layers done, current slot, records, pruned shapes, seconds so far
    act-R-S.f32                rank R's calibration boundary, slot S (raw float32 N_R × T × D)
    eval-S.pt                  the evaluation's dense and pruned hidden states, slot S
    out/                       the checkpoint being written: one shard per finished layer, then
                               the embedding/norm/head shard, the index, config, tokenizer, manifest

Layer i reads slot i mod 2 and writes slot (i+1) mod 2; its shard goes to out/ under a temporary
name and is renamed; only after every rank's slot and the shard are durable does rank 0 rewrite
state.json (atomically) to say "i+1 layers done". A run killed at any moment therefore resumes
from the last committed layer with the same inputs, and, every step being deterministic, writes
the same bytes. At the end out/ is renamed to --out (paths.replace_folder) and the state folder
removed; nothing half-written is ever at --out.

Whole-model plans: FLAP's plan streams (a LazyModel facade loads each layer on access, one
extra pass). What this is not: the algebra (ops),
the loop (pipeline.py) or the command line (cli.py).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from slimgpt import activations, distributed, paths
from slimgpt.evaluate import NonFiniteError, logits_problem
from slimgpt.model import LlamaConfig, param_count, rope_cos_sin
from slimgpt.pipeline import (LayerPlan, PruneError, PruneSettings, embed_calibration, prune_layers, setup,
                              summarize)

STATE_FORMAT = "slimgpt-stream-state"
STATE_VERSION = 1
RESUME_MARKER = ".slimgpt-resume"
ACTIVATIONS = ("auto", "ram", "disk")


class ResumeError(ValueError):
    """A saved state that cannot be resumed (one clear line; nothing is deleted)."""


def kill_point(where: str, partial: Path | None = None) -> None:
    """Test hook: SLIMGPT_TEST_KILL=WHERE ends the process at once at that point (os._exit, no
    clean-up), after cutting `partial` to half its size to leave a half-written file behind."""
    if os.environ.get("SLIMGPT_TEST_KILL") == where:
        if partial is not None and partial.exists():
            os.truncate(partial, partial.stat().st_size // 2)
        os._exit(75)


def state_dir(out: Path) -> Path:
    """The hidden state folder of a streamed run at `out`."""
    return Path(out).parent / f".{Path(out).name}.resume"


# ----------------------------------------------------------------------------------------------
# Sources: where layers come from

class LoadedSource:
    """A model already in memory (GGUF files, tiny models) as a layer source; each layer is
    handed over and released once written, so the streamed output and resume work for it too."""

    def __init__(self, loaded):
        self.loaded, self.model = loaded, loaded.model
        self.config: LlamaConfig = loaded.model.config
        self.tokenizer, self.source, self.source_dtype = loaded.tokenizer, loaded.source, loaded.source_dtype
        self.tokenizer_config, self.generation_config = loaded.tokenizer_config, loaded.generation_config

    def layer(self, i: int, device):
        return self.model.model.layers[i].to(device)

    def release(self, i: int) -> None:
        self.model.model.layers[i] = torch.nn.Identity()

    def tensor(self, name: str, device="cpu", dtype=torch.float32) -> torch.Tensor:
        return self.model.state_dict()[name].to(device, dtype)

    def embed_name(self) -> str:
        return "model.embed_tokens.weight"

    def head_name(self) -> str:
        return "model.embed_tokens.weight" if self.config.tie_word_embeddings else "lm_head.weight"

    def plan_model(self, device):
        return self.model.to(device)

    def fingerprint(self) -> dict:
        src, f = self.source, {}
        if os.path.isfile(src):
            st = os.stat(src)
            f = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        return {"source": src, "kind": self.loaded.kind, "file": f, "config": self.config.to_dict()}


class LazySource:
    """A model folder read one layer at a time (loaders.lazy)."""

    def __init__(self, ckpt):
        self.ckpt, self.config = ckpt, ckpt.config
        self.tokenizer, self.source, self.source_dtype = ckpt.tokenizer, ckpt.source, ckpt.source_dtype
        self.tokenizer_config, self.generation_config = ckpt.tokenizer_config, ckpt.generation_config

    def layer(self, i: int, device):
        return self.ckpt.layer(i, device)

    def release(self, i: int) -> None:
        pass

    def tensor(self, name: str, device="cpu", dtype=torch.float32) -> torch.Tensor:
        return self.ckpt.tensor(name, device, dtype)

    def embed_name(self) -> str:
        return self.ckpt.embed_name()

    def head_name(self) -> str:
        return self.ckpt.head_name()

    def plan_model(self, device):
        from slimgpt.loaders.lazy import LazyModel
        return LazyModel(self.ckpt, device)

    def fingerprint(self) -> dict:
        return self.ckpt.fingerprint()


def open_source(name_or_dir: str):
    """A folder opens lazily; every other model (GGUF, tiny names) is loaded whole."""
    if os.path.isdir(name_or_dir):
        from slimgpt.loaders.lazy import open_lazy
        return LazySource(open_lazy(name_or_dir))
    from slimgpt.loaders import load_model
    return LoadedSource(load_model(name_or_dir))


# ----------------------------------------------------------------------------------------------
# The quick perplexity, streamed

class StreamEval:
    """`evaluate.perplexity` computed layer by layer: the same windows, batches and operations,
    so the streamed perplexities equal the in-memory ones. The dense hidden states pass through
    each layer before it is pruned, the pruned ones after."""

    def __init__(self, tokens: torch.Tensor, seqlen: int, max_tokens: int, device):
        n_win = min(tokens.numel() // seqlen, max_tokens // seqlen)
        if n_win < 1:
            raise ValueError(f"not enough tokens for one window of {seqlen} (stream {tokens.numel()}, "
                             f"max_tokens {max_tokens})")
        self.ids = tokens[: n_win * seqlen].view(n_win, seqlen)
        self.bs, self.seqlen, self.device = max(1, 1024 // seqlen), seqlen, torch.device(device)
        self.hidden: dict = {}

    def start(self, embed) -> None:
        x = torch.cat([embed(self.ids[s:s + self.bs].to(self.device)) for s in range(0, len(self.ids), self.bs)])
        self.hidden = {"dense": x.float(), "pruned": x.float().clone()}

    def forward(self, which: str, layer, cfg) -> None:
        cos, sin = rope_cos_sin(self.seqlen, cfg.head_dim, cfg.rope_theta, self.device, torch.float32,
                                cfg.rope_scaling)
        x = self.hidden[which]
        for s in range(0, x.shape[0], self.bs):
            x[s:s + self.bs] = layer(x[s:s + self.bs], cos, sin)

    def perplexity(self, which: str, norm, lm_head) -> dict:
        t0, nll, count = time.perf_counter(), 0.0, 0
        x = self.hidden[which]
        for s in range(0, x.shape[0], self.bs):
            ids = self.ids[s:s + self.bs].to(self.device)
            logits = lm_head(norm(x[s:s + self.bs]))
            if (problem := logits_problem(logits)) is not None:
                raise NonFiniteError(f"the {which} model's logits are {problem}; its weights or config are broken")
            V = logits.shape[-1]
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), ids[:, 1:].reshape(-1), reduction="sum")
            nll += float(loss)
            count += ids[:, 1:].numel()
        mean = nll / count
        return {"ppl": math.exp(mean), "nll": mean, "seqlen": self.seqlen, "windows": len(self.ids),
                "tokens": count, "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------------------
# The state folder

@dataclass
class State:
    """state.json of a streamed run (see the module docstring)."""
    fingerprint: dict
    ratios: list
    plan: list                          # [heads, kv_heads, channels or None] per layer
    done: int = 0                       # layers finished and committed
    slot: int = 0                       # the slot holding layer `done`'s inputs
    records: list = field(default_factory=list)
    shapes: list = field(default_factory=list)      # pruned layers: heads, kv, kv_map, intermediate, biases
    tensor_bytes: int = 0               # bytes of tensor data in the shards so far
    weight_map: dict = field(default_factory=dict)
    seconds: float = 0.0                # pruning time of the finished layers (across interruptions)
    resumed: int = 0                    # how many times this run was resumed

    def to_json(self) -> dict:
        import slimgpt
        return dict(asdict(self), format=STATE_FORMAT, state_version=STATE_VERSION, slimgpt=slimgpt.__version__)


def _first_difference(a, b, where="") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
    short = lambda v: (json.dumps(v, default=str)[:60])  # noqa: E731
    return f"{where}: {short(a)} then, {short(b)} now"


class StateFolder:
    """The hidden `.NAME.resume/` folder: created, resumed or removed; rank 0 writes it."""

    def __init__(self, out: Path, comm):
        self.out, self.dir, self.comm = Path(out), state_dir(out), comm
        self.ckpt = self.dir / "out"

    # -- ownership ---------------------------------------------------------------------------------

    def _marker(self) -> dict | None:
        m = paths.read_json(self.dir / RESUME_MARKER)
        return m if isinstance(m, dict) else None

    def _check_unused(self) -> None:
        m = self._marker()
        pid = m.get("pid") if m else None
        if isinstance(pid, int) and pid != os.getpid() and paths._alive(pid):
            raise ResumeError(f"{self.dir}: another slimgpt run (pid {pid}) is writing this state; wait for it or "
                              "stop it")

    def _mark(self) -> None:
        import slimgpt
        paths.write_file(self.dir / RESUME_MARKER, json.dumps(
            {"format": STATE_FORMAT, "state_version": STATE_VERSION, "slimgpt": slimgpt.__version__,
             "pid": os.getpid()}).encode())

    def exists(self) -> bool:
        return self.dir.is_dir() and self._marker() is not None

    def remove(self) -> None:
        """Delete the state (only a folder with our marker: nothing of the user's)."""
        if os.path.lexists(self.dir):
            if not self.exists() or self.dir.is_symlink():
                raise ResumeError(f"{self.dir} exists and was not written by slimgpt; remove it or choose another --out")
            self._check_unused()
            shutil.rmtree(self.dir)

    # -- reading and writing -----------------------------------------------------------------------

    def load(self, fingerprint: dict) -> State | None:
        """The saved state when it can be resumed with this fingerprint; None when there is none;
        ResumeError (one line, nothing deleted) for another version or other settings/input."""
        if not os.path.lexists(self.dir):
            return None
        import slimgpt
        m = self._marker()
        if not self.dir.is_dir() or m is None:
            raise ResumeError(f"{self.dir} exists and was not written by slimgpt; remove it or choose another --out")
        self._check_unused()
        raw = paths.read_json(self.dir / "state.json")
        if m.get("state_version") != STATE_VERSION or m.get("slimgpt") != slimgpt.__version__ or (
                isinstance(raw, dict) and (raw.get("state_version") != STATE_VERSION
                                           or raw.get("slimgpt") != slimgpt.__version__)):
            v = (raw or m).get("slimgpt") if isinstance(raw, dict) else m.get("slimgpt")
            n = (raw or m).get("state_version") if isinstance(raw, dict) else m.get("state_version")
            raise ResumeError(f"{self.dir}: the saved state was written by slimgpt {v} (state format {n}); this is "
                              f"slimgpt {slimgpt.__version__} (format {STATE_VERSION}), which cannot resume it; rerun "
                              "without --resume to start over")
        if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT:
            return None                 # created, killed before its first commit: nothing to resume
        names = {f.name for f in __import__("dataclasses").fields(State)}
        st = State(**{k: v for k, v in raw.items() if k in names})
        if st.fingerprint != fingerprint:
            raise ResumeError(f"--resume: {self.dir} was started with other settings or another input "
                              f"({_first_difference(st.fingerprint, fingerprint)}); rerun without --resume to "
                              "start over")
        return st

    def create(self) -> None:
        self.remove()
        self.ckpt.mkdir(parents=True)
        self._mark()

    def adopt(self) -> None:
        """Take over a resumed state: our pid in the marker, temporaries of the dead run removed."""
        self._mark()
        self.ckpt.mkdir(exist_ok=True)
        for p in list(self.dir.glob(".*.tmp-*")) + list(self.ckpt.glob(".*.tmp-*")):
            p.unlink()

    def commit(self, st: State) -> None:
        paths.write_file(self.dir / "state.json", (json.dumps(st.to_json(), default=_plain) + "\n").encode())

    def slot_path(self, rank: int, slot: int) -> Path:
        return self.dir / f"act-{rank}-{slot}.f32"

    def eval_path(self, slot: int) -> Path:
        return self.dir / f"eval-{slot}.pt"

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.rglob("*") if p.is_file()) if self.dir.is_dir() else 0


def _plain(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def write_tensors(tensors: dict, path: Path, where: str) -> int:
    """A safetensors file written under a temporary name, made durable, then renamed into place
    (`where` names the kill point of the tests). Returns the bytes of tensor data."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    kill_point(where, partial=tmp)
    paths.durable_replace(tmp, path)
    return sum(t.numel() * t.element_size() for t in tensors.values())


def shard_name(k: int, n: int) -> str:
    return f"model-{k:05d}-of-{n:05d}.safetensors"


# ----------------------------------------------------------------------------------------------
# The streamed run

@dataclass
class StreamOptions:
    out: Path
    resume: bool = False
    activations: str = "auto"           # auto | ram | disk
    dtype: str = "float32"              # storage dtype of the output
    eval_tokens: torch.Tensor | None = None   # evaluation token stream (None: no quick perplexity)
    eval_seqlen: int = 128
    eval_max_tokens: int = 0
    extra_fingerprint: dict = field(default_factory=dict)   # e.g. the calibration source


@dataclass
class StreamResult:
    records: list
    summary: dict
    config: LlamaConfig                 # the pruned model's config
    eval: dict                          # {"dense": ..., "pruned": ...} perplexities (rank 0)
    storage: str                        # ram | disk
    resumed_from: int                   # layers already done when this process started
    seconds: dict                       # load / eval / write / state time of this process


def prune_streaming(src, calib: torch.Tensor, settings: PruneSettings, opts: StreamOptions, *,
                    comm=distributed.LOCAL, log=None, progress: bool = True) -> tuple[StreamResult, "Finisher"]:
    """Prune `src` (LazySource or LoadedSource) layer by layer into the state folder beside
    opts.out. Returns the result and a Finisher that writes the rest and moves it to opts.out."""
    s, cfg = settings, src.config
    s.validate()
    if not s.shrink:
        raise PruneError("streaming writes each layer physically shrunk; shrink=False needs the in-memory pipeline")
    log = log or (lambda m: None)
    dev, L = torch.device(s.device), cfg.num_hidden_layers
    folder = StateFolder(opts.out, comm)
    fingerprint = _fingerprint(src, calib, s, opts, comm)
    local = comm.shard(calib)
    storage = _storage(opts.activations, local.shape + (cfg.hidden_size,), dev)
    if comm.is_root:
        check_disk_space(folder, cfg, calib.shape, opts)          # before anything is written
    st = _open_state(folder, fingerprint, opts, comm, log)
    saved = (st.ratios, [LayerPlan(*p) for p in st.plan]) if st is not None else None
    job = setup(cfg, src.plan_model(dev) if saved is None else None, calib, s, comm=comm, saved=saved)
    st = _resumed(job, st, fingerprint)
    start, t = st.done, {"load": 0.0, "eval": 0.0, "write": 0.0, "state": 0.0}
    ev = StreamEval(opts.eval_tokens, opts.eval_seqlen, opts.eval_max_tokens, dev) \
        if comm.is_root and opts.eval_tokens is not None else None
    X = _boundary(folder, st, src, local, s, storage, ev, comm, t)
    n_shards = L + 1

    def layer_at(i):
        t0 = time.perf_counter()
        layer = src.layer(i, dev)
        t["load"] += time.perf_counter() - t0
        return layer

    def before(i, layer):
        if ev is not None:
            t0 = time.perf_counter()
            ev.forward("dense", layer, cfg)
            t["eval"] += time.perf_counter() - t0

    def after(i, layer, rec):
        t1 = time.perf_counter()
        if ev is not None:
            ev.forward("pruned", layer, cfg)
        t["eval"] += time.perf_counter() - t1
        t1 = time.perf_counter()
        nxt = 1 - st.slot
        if comm.is_root:
            _write_layer(i, layer, st, folder, opts.dtype, n_shards)
        t["write"] += time.perf_counter() - t1
        t1 = time.perf_counter()
        if isinstance(X, activations.Resident):
            activations.save(X.X, str(folder.slot_path(comm.rank, nxt)), s.batch_size)
        if ev is not None:
            _save_eval(ev, folder.eval_path(nxt))
        src.release(i)
        comm.barrier()                      # every rank's slot is durable before the commit
        kill_point(f"commit{i}")
        attn, mlp = layer.self_attn, layer.mlp
        st.shapes.append({"heads": attn.n_heads, "kv_heads": attn.n_kv, "kv_map": attn.kv_map.tolist(),
                          "intermediate": mlp.down_proj.in_features, "o_bias": attn.o_proj.bias is not None,
                          "mlp_bias": mlp.down_proj.bias is not None})
        st.records.append(rec)
        st.done, st.slot = i + 1, nxt
        st.seconds = time.perf_counter() - job.t_start
        if comm.is_root:
            folder.commit(st)
        t["state"] += time.perf_counter() - t1

    records = prune_layers(job, layer_at, X, start=start, before=before, after=after, log=log, progress=progress)
    if isinstance(X, activations.OnDisk):
        X.close()
    assert len(st.records) == L, (len(st.records), L)
    pruned_cfg = _pruned_config(cfg, st.shapes)
    evals = _perplexities(ev, src, cfg, dev, t) if ev is not None else {}
    summary = summarize(job, st.records, param_count(cfg), param_count(pruned_cfg), calib.shape)
    result = StreamResult(st.records, summary, pruned_cfg, evals, storage, start, t)
    del records
    return result, Finisher(folder, src, st, pruned_cfg, opts, comm)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _resumed(job, st: State | None, fingerprint: dict) -> State:
    """The state of the run: a new one from the job's plan, or a resumed one whose finished layers
    are charged to the budget and whose seconds so far count."""
    if st is None:
        st = State(fingerprint, job.ratios, [[p.heads, p.kv_heads, p.channels] for p in job.plan])
    for rec in st.records:                                   # the budget of the finished layers
        job.run.budget.remove(heads=len(rec["heads_pruned"]), kv_heads=len(rec["kv_pruned"]),
                              channels=len(rec["channels_pruned"]))
    job.t_start -= st.seconds
    return st


def _write_layer(i: int, layer, st: State, folder: StateFolder, dtype: str, n_shards: int) -> None:
    """Layer i's shard in the save dtype (converted on the device, then copied), recorded in st."""
    tensors = {f"model.layers.{i}.{k}": v.detach().to(_DTYPES[dtype]).to("cpu").contiguous()
               for k, v in layer.state_dict().items()}
    name = shard_name(i + 1, n_shards)
    st.tensor_bytes += write_tensors(tensors, folder.ckpt / name, f"write{i}")
    st.weight_map.update({k: name for k in tensors})


def _perplexities(ev: StreamEval, src, cfg, dev, t: dict) -> dict:
    """The dense and pruned perplexities of the hidden states that passed through every layer."""
    t0 = time.perf_counter()
    norm, head = _final_modules(src, cfg, dev)
    evals = {which: dict(ev.perplexity(which, norm, head)) for which in ("dense", "pruned")}
    t["eval"] += time.perf_counter() - t0
    return evals


class Finisher:
    """The last step of a streamed run: the embedding/norm/head shard, the index, config,
    tokenizer and manifest into out/, then out/ → --out and the state folder removed."""

    def __init__(self, folder: StateFolder, src, st: State, cfg, opts: StreamOptions, comm):
        self.folder, self.src, self.st, self.cfg, self.opts, self.comm = folder, src, st, cfg, opts, comm

    def __call__(self, manifest: dict, *, force: bool = False, inputs=()) -> str:
        from slimgpt.checkpoint import check_output_dir, write_metadata

        folder, st, cfg, comm = self.folder, self.st, self.cfg, self.comm
        out = Path(self.opts.out)
        if comm.is_root:
            out = check_output_dir(out, force, inputs)
            L = cfg.num_hidden_layers
            name = shard_name(L + 1, L + 1)
            dt = _DTYPES[self.opts.dtype]
            tensors = {"model.embed_tokens.weight": self.src.tensor("model.embed_tokens.weight", "cpu", dt),
                       "model.norm.weight": self.src.tensor("model.norm.weight", "cpu", dt)}
            if not cfg.tie_word_embeddings:
                tensors["lm_head.weight"] = self.src.tensor("lm_head.weight", "cpu", dt)
            size = st.tensor_bytes + write_tensors(tensors, folder.ckpt / name, "write-head")
            weight_map = dict(st.weight_map, **{k: name for k in tensors})
            del tensors
            index = {"metadata": {"total_size": size}, "weight_map": dict(sorted(weight_map.items()))}
            (folder.ckpt / "model.safetensors.index.json").write_bytes((json.dumps(index, indent=1) + "\n").encode())
            write_metadata(folder.ckpt, cfg, self.src.tokenizer, manifest, dtype=self.opts.dtype,
                           tokenizer_config=self.src.tokenizer_config, generation_config=self.src.generation_config)
            _make_durable(folder.ckpt)
            kill_point("finish")
            paths.replace_folder(folder.ckpt, out)
            kill_point("renamed")
            shutil.rmtree(folder.dir, ignore_errors=True)
        comm.barrier()
        return str(out)


def _make_durable(folder: Path) -> None:
    mask = paths._umask()
    for p in folder.iterdir():
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
        paths.fsync(p)
    os.chmod(folder, 0o777 & ~mask)
    paths.fsync(folder)


# ----------------------------------------------------------------------------------------------
# Helpers of prune_streaming

def _fingerprint(src, calib, s: PruneSettings, opts: StreamOptions, comm) -> dict:
    import hashlib
    settings = asdict(s)
    settings["device"] = torch.device(s.device).type         # cuda:0 and cuda:1 compute alike
    ev = None
    if opts.eval_tokens is not None:
        ev = {"seqlen": opts.eval_seqlen, "max_tokens": opts.eval_max_tokens,
              "sha256": hashlib.sha256(opts.eval_tokens.numpy().tobytes()).hexdigest()}
    return {"settings": settings, "model": src.fingerprint(), "dtype": opts.dtype, "eval": ev,
            "calibration": dict(opts.extra_fingerprint, sha256=hashlib.sha256(calib.numpy().tobytes()).hexdigest(),
                                shape=list(calib.shape)),
            "ranks": comm.world}


def _open_state(folder: StateFolder, fingerprint: dict, opts: StreamOptions, comm, log):
    """Rank 0 resumes or (re)creates the state folder; the other ranks read what it decided."""
    st = None
    if comm.is_root:
        if opts.resume:
            st = folder.load(fingerprint)
            if st is None:
                log(f"resume: no saved state at {folder.dir}; starting from layer 0")
            else:
                log(f"resume: {st.done} of {len(st.ratios)} layers already done ({folder.dir})")
        if st is None:
            folder.create()
        else:
            st.resumed += 1
            folder.adopt()
    raw = comm.broadcast_object(None if st is None else st.to_json())
    if raw is not None and not comm.is_root:
        names = {f.name for f in __import__("dataclasses").fields(State)}
        st = State(**{k: v for k, v in raw.items() if k in names})
    return st


def _storage(kind: str, shape, dev) -> str:
    """ram or disk for this rank's boundary: auto keeps it in memory (RAM, or the GPU's memory
    for a CUDA device) when it takes at most a quarter of what is available."""
    if kind not in ACTIVATIONS:
        raise PruneError(f"--activations must be one of {ACTIVATIONS}, got {kind!r}")
    if kind != "auto":
        return kind
    need = math.prod(shape) * 4
    return "ram" if need <= 0.25 * available_memory(dev) else "disk"


def available_memory(dev) -> int:
    """Bytes available for new allocations: free GPU memory, or MemAvailable of /proc/meminfo."""
    dev = torch.device(dev)
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_disk_space(folder: StateFolder, cfg, calib_shape, opts: StreamOptions) -> None:
    """Refuse to start when the state folder's file system cannot hold what the run will write:
    two slots of calibration activations, the evaluation's hidden states and the output."""
    N, T = calib_shape
    act = 2 * N * T * cfg.hidden_size * 4
    ev = 0 if opts.eval_tokens is None else 2 * 2 * min(opts.eval_max_tokens, opts.eval_tokens.numel()) * \
        cfg.hidden_size * 4
    out = param_count(cfg) * _DTYPES[opts.dtype].itemsize
    need = act + ev + out - (folder.used_bytes() if opts.resume else 0)
    free = shutil.disk_usage(folder.out.parent).free + (0 if opts.resume else folder.used_bytes())
    if need > free:
        g = lambda n: f"{n / 2 ** 30:.2f} GiB"  # noqa: E731
        raise PruneError(f"not enough free disk space at {folder.out.parent} for a streamed run: it writes up to "
                         f"{g(need)} (activations {g(act)} in two slots, output {g(out)}, evaluation {g(ev)}), and "
                         f"{g(free)} are free; free some space or choose another --out")


def _boundary(folder: StateFolder, st: State, src, local, s: PruneSettings, storage: str, ev, comm, t: dict):
    """The calibration boundary (and the evaluation's hidden states) of layer st.done: the
    embeddings for a fresh run, the committed slot for a resumed one."""
    dev, cfg = torch.device(s.device), src.config
    shape = tuple(local.shape) + (cfg.hidden_size,)
    t0 = time.perf_counter()
    fresh = st.done == 0 and not st.records
    slots = (str(folder.slot_path(comm.rank, 0)), str(folder.slot_path(comm.rank, 1)))
    embed = None
    if fresh:
        E = src.tensor(src.embed_name(), dev)
        embed = lambda ids: F.embedding(ids, E)  # noqa: E731
    if storage == "disk":
        X = activations.OnDisk(slots, shape, dev, cur=st.slot, create=fresh)
        if fresh:
            embed_calibration(embed, local, s, into=X)
            X.sync_input()
    elif fresh:
        X = activations.Resident(embed_calibration(embed, local, s))
        activations.save(X.X, slots[0], s.batch_size)
    else:
        X = activations.Resident(activations.load(slots[st.slot], shape, dev))
    if ev is not None:
        if fresh:
            ev.start(embed)
            _save_eval(ev, folder.eval_path(0))
        else:
            ev.hidden = {k: v.to(dev) for k, v in torch.load(folder.eval_path(st.slot), weights_only=True).items()}
    del embed
    comm.barrier()
    if fresh and comm.is_root:
        folder.commit(st)
    t["load"] += time.perf_counter() - t0
    return X


def _save_eval(ev: StreamEval, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({k: v.cpu() for k, v in ev.hidden.items()}, tmp)
    paths.durable_replace(tmp, path)


def _final_modules(src, cfg, dev):
    """The final RMSNorm and lm_head (float32, on the device) for the quick perplexity."""
    from slimgpt.model import RMSNorm
    norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
    norm.weight = torch.nn.Parameter(src.tensor("model.norm.weight", dev))
    W = src.tensor(src.head_name(), dev)
    return norm.to(dev), (lambda x: F.linear(x, W))


def _pruned_config(cfg: LlamaConfig, shapes: list) -> LlamaConfig:
    d = cfg.to_dict()
    d.update(layer_heads=[x["heads"] for x in shapes], layer_kv_heads=[x["kv_heads"] for x in shapes],
             layer_kv_map=[x["kv_map"] for x in shapes], layer_intermediate=[x["intermediate"] for x in shapes])
    o_bias, mlp_bias = {x["o_bias"] for x in shapes}, {x["mlp_bias"] for x in shapes}
    if len(o_bias) > 1 or len(mlp_bias) > 1:
        raise PruneError("internal error: some layers have a compensation bias and others not")
    d["o_proj_bias"], d["mlp_bias"] = (o_bias or {cfg.o_proj_bias}).pop(), (mlp_bias or {cfg.mlp_bias}).pop()
    return LlamaConfig.from_dict(d)
