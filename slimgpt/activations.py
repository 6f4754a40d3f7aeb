"""The calibration activations at a layer boundary (N × T × D, float32): in memory or on disk.

What this is: where the layer loop (pipeline.prune_layer) reads layer i's inputs and writes its
outputs, batch by batch.

- `Resident`: one tensor on the compute device, updated in place (the inputs of a batch are
  read before its outputs are written over them). The in-memory pipeline and the streaming one
  when the activations fit.
- `OnDisk`: two raw float32 files (slot 0 and slot 1, row-major N × T × D: `np.memmap(path,
  np.float32, mode="r", shape=(N, T, D))` opens one), read and written with positioned reads and
  writes per batch, never mapped, so only a batch at a time is resident. Layer i reads slot s and
  writes slot 1 − s; the input slot is never written during the layer, so a run killed at any
  moment still has layer i's inputs intact (streaming.py's resume relies on this).

`save` / `load` move a Resident boundary to and from such a slot file (the resumable state of a
streaming run with the activations in memory). What this is not: the statistics (stats.py) or
the caches of A and F (pipeline.py, bounded by cache_mb).
"""
from __future__ import annotations

import os

import torch


class Resident:
    """A boundary held as one tensor on the compute device, updated in place."""

    def __init__(self, X: torch.Tensor):
        self.X = X
        self.shape, self.device = tuple(X.shape), X.device

    def read(self, b: int, n: int) -> torch.Tensor:
        return self.X[b:b + n]

    def write(self, b: int, t: torch.Tensor) -> None:
        view = self.X[b:b + t.shape[0]]
        if view.data_ptr() != t.data_ptr():
            view.copy_(t)

    def output(self, b: int, n: int) -> torch.Tensor:
        return self.X[b:b + n]

    def advance(self) -> None:
        pass


def _row_bytes(shape) -> int:
    return shape[1] * shape[2] * 4


def _pread_into(fd: int, t: torch.Tensor, offset: int) -> None:
    buf = memoryview(t.view(-1).view(torch.uint8).numpy())
    done = 0
    while done < len(buf):
        got = os.preadv(fd, [buf[done:]], offset + done)
        if got <= 0:
            raise OSError(f"activation file ends after {offset + done} bytes")
        done += got


def _pwrite_from(fd: int, t: torch.Tensor, offset: int) -> None:
    buf = memoryview(t.detach().contiguous().view(-1).view(torch.uint8).numpy())
    done = 0
    while done < len(buf):
        done += os.pwritev(fd, [buf[done:]], offset + done)


class OnDisk:
    """A boundary in two slot files; layer inputs from slot `cur`, outputs to the other."""

    def __init__(self, paths: tuple[str, str], shape, device, cur: int = 0, create: bool = False):
        self.paths, self.shape, self.device, self.cur = paths, tuple(shape), torch.device(device), cur
        size = self.shape[0] * _row_bytes(self.shape)
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        self.fds = [os.open(p, flags, 0o600) for p in paths]
        for fd in self.fds:
            if create or os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)

    def _read(self, slot: int, b: int, n: int) -> torch.Tensor:
        n = min(n, self.shape[0] - b)
        t = torch.empty((n,) + self.shape[1:], dtype=torch.float32)
        _pread_into(self.fds[slot], t, b * _row_bytes(self.shape))
        return t.to(self.device)

    def read(self, b: int, n: int) -> torch.Tensor:
        return self._read(self.cur, b, n)

    def write(self, b: int, t: torch.Tensor) -> None:
        _pwrite_from(self.fds[1 - self.cur], t.to("cpu", torch.float32), b * _row_bytes(self.shape))

    def output(self, b: int, n: int) -> torch.Tensor:
        return self._read(1 - self.cur, b, n)

    def advance(self) -> None:
        """The outputs become the next layer's inputs (made durable first)."""
        os.fsync(self.fds[1 - self.cur])
        self.cur = 1 - self.cur

    def write_input(self, b: int, t: torch.Tensor) -> None:
        """Fill the input slot (the layer-0 embeddings)."""
        _pwrite_from(self.fds[self.cur], t.to("cpu", torch.float32), b * _row_bytes(self.shape))

    def sync_input(self) -> None:
        os.fsync(self.fds[self.cur])

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def save(X: torch.Tensor, path: str, batch: int = 8) -> None:
    """Write a Resident boundary to a slot file (batch by batch through the CPU), durably."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, X.numel() * 4)
        for b in range(0, X.shape[0], batch):
            _pwrite_from(fd, X[b:b + batch].to("cpu", torch.float32), b * _row_bytes(X.shape))
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: str, shape, device) -> torch.Tensor:
    """A slot file back as one tensor on `device`."""
    X = torch.empty(tuple(shape), dtype=torch.float32, device=device)
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_size != X.numel() * 4:
            raise OSError(f"{path}: {os.fstat(fd).st_size} bytes, expected {X.numel() * 4}")
        for b in range(0, shape[0], 8):
            t = torch.empty((min(8, shape[0] - b),) + tuple(shape[1:]), dtype=torch.float32)
            _pread_into(fd, t, b * _row_bytes(shape))
            X[b:b + t.shape[0]] = t.to(device)
    finally:
        os.close(fd)
    return X
