"""Data-parallel calibration on torch.distributed (`torchrun --nproc-per-node K -m slimgpt prune ...`).

What this is: the few collective steps the layer loop needs when K processes share the
calibration samples, and the rule that keeps a failing rank from leaving the others hanging.

- `shard`: rank r takes rows [r·N/K, (r+1)·N/K) of the N calibration windows (contiguous,
  np.array_split sizes) and forwards only those; every rank holds the working layer (or the
  whole model in the in-memory mode) and its own share of the activations.
- `reduce_stats`: per projection, the statistics of the K shards are summed into those of all N
  windows, in float64: n (all_reduce), n·mean → mean, M2_r + n_r (mean_r − mean)² → M2 (Chan's
  merge), n_r·H_r → H. One D² (o_proj's input, n_h·d wide) and one m² (down_proj's) matrix per
  layer, plus vectors.
- `selection`: the method runs on rank 0 only; its result (the compensated weight, the pruned
  indices and the log info) is broadcast, so every rank holds bit-for-bit the same pruned layer
  without relying on the backend being deterministic across processes.
- whole-model plans (FLAP's `plan`, `--schedule flap`) run on rank 0 over all N windows and are
  broadcast (`broadcast_object`).

Failure rule: every collective step starts with `check()`, an all_reduce of a 0/1 flag. A rank
whose own work raises calls `fail(error)` (the CLI does, around the whole command), which is the
same all_reduce with flag 1: the other ranks, waiting in their next `check()`, see it, gather
the failing rank's message and raise `PeerFailed` ("rank 1 failed: ..."), so every rank exits
with one clear line. A rank that dies without a word (killed, os._exit) closes its sockets;
the others' next collective then fails (gloo: connection closed; NCCL and any silence: the
process-group timeout, `SLIMGPT_DIST_TIMEOUT` seconds, default 7200) and torchrun stops the
remaining workers of a failed group. Backends: gloo on the CPU, NCCL on CUDA devices (each rank
on cuda:LOCAL_RANK unless --device names one).
"""
from __future__ import annotations

import datetime
import os

import numpy as np
import torch


class PeerFailed(RuntimeError):
    """Another rank failed; this one stops too (the message names the rank and its error)."""


class Local:
    """The single-process stand-in: every collective step is a no-op."""
    rank, world, is_root = 0, 1, True
    device = torch.device("cpu")

    def shard(self, calib: torch.Tensor) -> torch.Tensor:
        return calib

    def check(self) -> None:
        pass

    def reduce_stats(self, stats) -> None:
        pass

    def selection(self, fn, W):
        return fn()

    def broadcast_object(self, obj):
        return obj

    def barrier(self) -> None:
        pass

    def fail(self, error: BaseException) -> None:
        pass

    def close(self) -> None:
        pass


LOCAL = Local()


def launched() -> bool:
    """True when this process was started by torchrun (or another launcher) with WORLD_SIZE > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_device(device: str) -> str:
    """The device of this rank: cuda without an index becomes cuda:LOCAL_RANK."""
    if launched() and device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


class Dist(Local):
    """A torch.distributed process group (gloo on the CPU, NCCL on CUDA); see the module docstring."""

    def __init__(self, device: str = "cpu"):
        import torch.distributed as dist

        self.dist = dist
        self.device = torch.device(device)
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        timeout = datetime.timedelta(seconds=float(os.environ.get("SLIMGPT_DIST_TIMEOUT", "7200")))
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=timeout)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.is_root = self.rank == 0
        self._failed = False

    # -- the failure rule ------------------------------------------------------------------------

    def _flag(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        self.dist.all_reduce(t)
        return int(t.item())

    def _messages(self, mine: str | None) -> list:
        out = [None] * self.world
        self.dist.all_gather_object(out, mine)
        return out

    def check(self) -> None:
        """Raise PeerFailed on every rank when some rank has called fail()."""
        if self._flag(0):
            msgs = self._messages(None)
            self._failed = True
            who = [f"rank {r} failed: {m}" for r, m in enumerate(msgs) if m is not None]
            raise PeerFailed("; ".join(who) + "; all ranks stopped")

    def fail(self, error: BaseException) -> None:
        """Tell the other ranks (waiting in check()) that this one failed. Never raises."""
        if self._failed or isinstance(error, PeerFailed):
            return
        self._failed = True
        text = str(error) or type(error).__name__
        try:
            self._flag(1)
            self._messages(text.splitlines()[0][:500])
        except Exception:  # noqa: BLE001 - the others may be gone already
            pass

    # -- collective steps ------------------------------------------------------------------------

    def shard(self, calib: torch.Tensor) -> torch.Tensor:
        n = calib.shape[0]
        if n < self.world:
            raise ValueError(f"{n} calibration windows for {self.world} ranks: every rank needs at least one "
                             "(raise --nsamples or use fewer processes)")
        bounds = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(n), self.world)])
        return calib[int(bounds[self.rank]):int(bounds[self.rank + 1])]

    def reduce_stats(self, stats) -> None:
        """Sum the statistics of every rank's shard (float64; module docstring)."""
        self.check()
        dist = self.dist
        n_r = stats.n
        n = torch.tensor([float(n_r)], dtype=torch.float64, device=stats.mean.device)
        dist.all_reduce(n)
        n_all = int(round(float(n.item())))
        mean_r = stats.mean.clone()
        total = stats.mean * n_r
        dist.all_reduce(total)
        mean = total / n_all
        m2 = stats.m2 + n_r * (mean_r - mean) ** 2
        dist.all_reduce(m2)
        if stats.H is not None:
            stats.H.mul_(n_r)
            dist.all_reduce(stats.H)
            stats.H.div_(n_all)
        stats.n, stats.mean, stats.m2 = n_all, mean, m2

    def selection(self, fn, W):
        """Run the method on rank 0 and broadcast its Selection (weight, indices, info)."""
        from slimgpt.methods.base import Selection

        self.check()
        sel = fn() if self.is_root else None
        self.check()
        meta = [None if sel is None else (list(sel.pruned), sel.info)]
        self.dist.broadcast_object_list(meta, src=0)
        new_W = sel.W.contiguous() if self.is_root else torch.empty_like(W)
        self.dist.broadcast(new_W, src=0)
        pruned, info = meta[0]
        return Selection(new_W, pruned, info)

    def broadcast_object(self, obj):
        self.check()
        box = [obj if self.is_root else None]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        self.check()
        self._flag(0)

    def close(self) -> None:
        if self.dist.is_initialized():
            try:
                self.dist.destroy_process_group()
            except Exception:  # noqa: BLE001
                pass


def from_env(device: str):
    """Dist when launched with WORLD_SIZE > 1, else LOCAL."""
    return Dist(device) if launched() else LOCAL


def test_fault(rank: int, where: str) -> None:
    """Test hooks: SLIMGPT_TEST_FAIL="RANK:WHERE" raises on that rank at that point (e.g.
    "1:layer1", in the middle of layer 1), so the tests can check that every rank stops with a
    clear error; SLIMGPT_TEST_KILL=WHERE ends the process there at once (os._exit, the resume
    tests; streaming.kill_point has the other points)."""
    spec = os.environ.get("SLIMGPT_TEST_FAIL")
    if spec and spec == f"{rank}:{where}":
        raise RuntimeError(f"test fault injected at {where}")
    if os.environ.get("SLIMGPT_TEST_KILL") == where:
        os._exit(75)
