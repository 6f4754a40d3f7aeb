"""A save killed, or failing, at any system call of its final phase never loses the user's folder
and leaves nothing behind once the next save to the same place has run (slimgpt.paths:
atomic_folder, replace_folder, clean_stale).

Faults are injected by strace at the N-th call of the save, counted over the whole family
(mkdir, fsync, the rename family, unlink/rmdir) in the order the save makes them. strace counts
each system call separately (`when=` is per call name), so a first, traced run lists the calls
and each fault names "the k-th call of that name". A killed run must end by the kill (the fault
was reached), never by finishing."""
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from slimgpt import paths

FAMILY = "mkdir,fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat,rmdir"
SIZE = 1 << 16                            # the weights file's size: "full-size" leftovers are found by content
SAVE = """
import sys
from pathlib import Path
from slimgpt import paths
out, tag = Path(sys.argv[1]), sys.argv[2].encode()
try:
    with paths.atomic_folder(out) as tmp:
        (tmp / "model.safetensors").write_bytes(tag * {size})
        (tmp / "config.json").write_bytes(tag)
        (tmp / "manifest.json").write_bytes(tag)
except OSError as e:
    sys.exit(f"error: {{e}}")
""".format(size=SIZE)


def _strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    return subprocess.run(["strace", "-qq", "-e", "trace=none", "true"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _strace_works(), reason="strace is missing or may not trace here")


def _save(out: Path, tag: str, *strace_args, log: Path | None = None) -> subprocess.CompletedProcess:
    """Run SAVE in a child under strace (no -f: only the saving process is traced)."""
    cmd = ["strace", "-qq", "-o", str(log or os.devnull), "-e", f"trace={FAMILY}", *strace_args,
           sys.executable, "-c", SAVE, str(out), tag]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")   # no .pyc renames in the count
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def _calls(log: Path) -> list[tuple[str, int]]:
    """(name, k) of every traced call in order: the call is the k-th one of that name."""
    seen, out = {}, []
    for line in log.read_text().splitlines():
        m = re.match(r"(\w+)\(", line)
        if m:
            seen[m[1]] = seen.get(m[1], 0) + 1
            out.append((m[1], seen[m[1]]))
    return out


def _whole(folder: Path) -> str | None:
    """The tag of a complete folder written by SAVE (None when absent); fails on a torn one."""
    if not folder.exists():
        return None
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "manifest.json", "model.safetensors"]
    tag = (folder / "manifest.json").read_text()
    assert (folder / "config.json").read_text() == tag
    assert (folder / "model.safetensors").read_text() == tag * SIZE
    return tag


SCENARIOS = {
    "new": ((), "rename"),                                                  # --out does not exist
    "force-swap": ((), "renameat2"),                                        # --force: RENAME_EXCHANGE
    "force-no-exchange": (("-e", "inject=renameat2:error=ENOSYS"), "rename"),   # file systems without it
}


@pytest.mark.parametrize("fault", ["kill", "error"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_fault_at_every_call_of_a_save(tmp_path, scenario, fault):
    base, swap_call = SCENARIOS[scenario]
    out = tmp_path / "out"
    if scenario != "new":
        assert _save(out, "old").returncode == 0
    log = tmp_path / "trace"
    assert _save(out, "new", *base, log=log).returncode == 0
    calls = [c for c in _calls(log) if not (scenario == "force-no-exchange" and c[0] == "renameat2")]
    names = [name for name, _ in calls]
    assert "fsync" in names and swap_call in names, calls    # the final phase is in the count
    swapped = max(i for i, name in enumerate(names) if name == swap_call)
    for i, (name, k) in enumerate(calls):
        shutil.rmtree(out, ignore_errors=True)
        if scenario != "new":
            assert _save(out, "old").returncode == 0
        action = "signal=KILL" if fault == "kill" else "error=EDQUOT"
        run = _save(out, "new", *base, "-e", f"inject={name}:{action}:when={k}")
        case = f"{scenario}: {fault} at {name} #{k}"
        if fault == "kill":
            assert run.returncode == -signal.SIGKILL, (case, run.returncode, run.stderr)
        else:
            cleanup = name in ("unlink", "unlinkat", "rmdir")    # removing a temporary: ignored
            assert run.returncode == (0 if cleanup else 1), (case, run.stderr)
            assert "Traceback" not in run.stderr and (cleanup or "Disk quota" in run.stderr), (case, run.stderr)
        # the destination is always a whole folder, the user's old one or the new one; without
        # the exchange, a kill between the two renames leaves the old one aside until the next
        # run puts it back (clean_stale, the first thing a save does)
        at_once = _whole(out)
        paths.clean_stale(out)
        assert _whole(out) in ({None, "new"} if scenario == "new" else {"old", "new"}), case
        assert at_once == _whole(out) or (scenario == "force-no-exchange" and at_once is None), case
        if fault == "error" and i <= swapped and scenario != "new":
            assert _whole(out) == "old", case                   # a save failed before its swap changes nothing
        # the next save to the same place removes every temporary of the interrupted one
        with paths.atomic_folder(out) as tmp:
            for f in ("model.safetensors", "config.json", "manifest.json"):
                (tmp / f).write_bytes(b"n" * (SIZE if f == "model.safetensors" else 1))
        assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == [], case


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_cleaning_removes_only_our_dead_temporaries(tmp_path):
    """By name (`.NAME.tmp-PID-*`, `.NAME.old-PID-*`) or by an earlier version's marker, of a
    process that no longer runs; a set-aside old folder goes back to its place first."""
    out, dead, alive = tmp_path / "out", _dead_pid(), os.getppid()
    gone = [f".out.tmp-{dead}-abc12345", f".out.tmp-{dead}-file0001", ".out.tmp-legacy01"]
    kept = [f".out.tmp-{alive}-abc12345", ".out.tmp-notes", f".other.tmp-{dead}-abc12345",
            f".out.tmp-{dead}-abc12345-mine", f".out.tmp-{dead}-link1234"]
    for name in gone[:1] + gone[2:] + kept[:-1]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"x")
    (tmp_path / gone[1]).write_bytes(b"a report being written")
    (tmp_path / gone[2] / paths.MARKER).write_text(str(dead))
    (tmp_path / kept[-1]).symlink_to(tmp_path / kept[0])
    aside = tmp_path / f".out.old-{dead}-abc12345"
    (aside / "out").mkdir(parents=True)
    (aside / "out" / "model.safetensors").write_bytes(b"the user's old checkpoint")
    paths.clean_stale(out)
    assert sorted(p for p in os.listdir(tmp_path) if p != "out") == sorted(kept)
    assert (out / "model.safetensors").read_bytes() == b"the user's old checkpoint"
