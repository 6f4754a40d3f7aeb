"""Where the grader's worker runs: a private file tree in which slimgpt does not exist.

What this is: the operating-system half of the grader's isolation. With `unshare` (util-linux)
and either root or unprivileged user namespaces, the worker runs in new mount, PID, network, IPC
and UTS namespaces, chrooted into an empty tmpfs that holds only

- read-only binds of /usr, /lib*, /bin, /sbin, /etc and the Python installation, with every
  site-packages folder replaced by one that holds NumPy, SciPy and their own dependencies only;
- the grader's work folder (the submission, input-only cases, the output folder);
- a fresh /tmp, /dev/null, /dev/zero, /dev/urandom and a /proc of the new PID namespace.

The repository, the installed slimgpt package, the expected outputs and every other folder of
the host are not in that tree. As root the worker also drops to the user `nobody` with no
capabilities and no_new_privs. What it is not: a limit on CPU time or memory (grade.py's
timeout stops a worker) or a defence against kernel exploits.

Where namespaces are unavailable (no `unshare`, or neither root nor user namespaces), `mode()`
says so and grade.py runs the worker directly, guarded by _runner.py's audit hook only.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path

NOBODY = 65534
TMPFS_SIZE = "256m"   # the worker's /tmp and the tree itself live in memory
SYSTEM_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc")
ALLOWED_DISTRIBUTIONS = ("numpy", "scipy")


@lru_cache(maxsize=None)
def mode() -> str:
    """"root" (namespaces, drop to nobody), "userns" (namespaces through a user namespace) or
    "audit" (no OS isolation here: the audit hook only)."""
    if os.name != "posix" or shutil.which("unshare") is None:
        return "audit"
    flags = ["--mount", "--pid", "--fork", "--net", "--ipc", "--uts"]
    tries = [("root", flags)] if os.geteuid() == 0 else []
    tries.append(("userns", ["--user", "--map-root-user"] + flags))
    for name, args in tries:
        try:
            probe = subprocess.run(["unshare", *args, "--", "sh", "-c", "mount -t tmpfs none /mnt 2>/dev/null || "
                                    "mount -t tmpfs none /tmp"], capture_output=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return name
    return "audit"


def describe(how: str) -> str:
    return {"root": "namespaces (a private file tree without slimgpt, no network, user nobody)",
            "userns": "namespaces (a private file tree without slimgpt, no network, via a user namespace)",
            "audit": "audit hook only (no namespaces here; see README.md for what that guarantees)"}[how]


def _site_packages() -> list[str]:
    paths = sysconfig.get_paths()
    found = [paths[k] for k in ("purelib", "platlib") if k in paths]
    for name in ALLOWED_DISTRIBUTIONS:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            found.append(str(Path(spec.origin).resolve().parents[1]))
    return [p for p in dict.fromkeys(os.path.realpath(p) for p in found) if os.path.isdir(p)]


def _allowed_entries(site: str) -> list[str]:
    """The top-level entries of a site-packages folder that belong to NumPy, SciPy and the
    distributions they require (their *.libs folders, scipy_openblas, ...)."""
    names, todo, seen = set(), list(ALLOWED_DISTRIBUTIONS), set()
    while todo:
        dist_name = todo.pop()
        if dist_name in seen:
            continue
        seen.add(dist_name)
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in dist.files or []:
            top = f.parts[0]
            if top != ".." and not top.endswith(".pth"):
                names.add(top)
        for req in dist.requires or []:
            if "extra ==" not in req:
                todo.append(req.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0]
                            .split("!")[0].split("~")[0].strip())
    return sorted(e for e in names if os.path.exists(os.path.join(site, e)))


def _prefixes() -> list[str]:
    """The Python installation (and its base, for a virtual environment) outside SYSTEM_DIRS."""
    out = []
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
              os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))):
        p = os.path.realpath(p)
        if not any(p == d or p.startswith(d + "/") for d in SYSTEM_DIRS) and p not in out:
            out.append(p)
    return [p for p in out if not any(p != q and p.startswith(q + "/") for q in out)]


def command(how: str, argv: list[str], workdir: Path, root: Path, hidden: list[str]) -> list[str]:
    """The command that runs `argv` (an absolute interpreter and its arguments) in the private
    tree mounted on `root` (an empty folder outside `workdir`), with `workdir` bound read-write at
    its own path. `hidden`: paths that must not be visible even if they lie under a bound folder
    (the repository, the slimgpt package, the expected outputs); each is covered by an empty tmpfs."""
    workdir, root = os.path.realpath(workdir), os.path.realpath(root)
    os.makedirs(root, exist_ok=True)
    q = shlex.quote
    lines = ["set -e", f"R={q(root)}", f"mount -t tmpfs -o size={TMPFS_SIZE},mode=755 tmpfs \"$R\""]

    bound = []

    def bind(src, ro=True, dst=None):
        dst = dst or src
        bound.append(os.path.realpath(src))
        kind = "mkdir -p" if os.path.isdir(src) else "touch"
        if not os.path.isdir(src):
            lines.append(f"mkdir -p \"$R\"{q(os.path.dirname(dst))}")
        lines.append(f"{kind} \"$R\"{q(dst)}")
        lines.append(f"mount --rbind {q(src)} \"$R\"{q(dst)}")
        if ro:
            lines.append(f"mount -o remount,bind,ro \"$R\"{q(dst)}")

    def cover(path):
        lines.append(f"if [ -d \"$R\"{q(path)} ]; then mount -t tmpfs -o size=1m,mode=755 tmpfs \"$R\"{q(path)}; fi")

    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            lines.append(f"ln -s {q(os.readlink(d))} \"$R\"{q(d)}")
        elif os.path.isdir(d):
            bind(d)
    for p in _prefixes():
        bind(p)
    for site in _site_packages():
        entries = _allowed_entries(site)
        cover(site)
        for e in entries:
            bind(os.path.join(site, e))
    for path in map(os.path.realpath, hidden):
        # only what lies inside a bound folder is visible (a folder above one, e.g. a repository
        # holding the virtual environment, stays out without covering what was bound inside it)
        if os.path.exists(path) and any(path.startswith(b.rstrip("/") + "/") for b in bound):
            cover(path)
    lines += ["mkdir -p \"$R\"/tmp \"$R\"/proc",
              f"mount -t tmpfs -o size={TMPFS_SIZE},mode=1777 tmpfs \"$R\"/tmp",
              "mount -t proc proc \"$R\"/proc 2>/dev/null || true",
              "ulimit -u 512 2>/dev/null || true"]
    lines.append(f"mkdir -p \"$R\"{q(workdir)}")
    lines.append(f"mount --bind {q(workdir)} \"$R\"{q(workdir)}")  # after /tmp: it may lie under /tmp
    for dev in ("/dev/null", "/dev/zero", "/dev/urandom"):
        bind(dev, ro=False)
    drop = (["/usr/bin/setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"]
            if how == "root" and os.path.exists("/usr/bin/setpriv") else [])
    env = ["/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "LANG=C.UTF-8", "OPENBLAS_NUM_THREADS=1",
           "OMP_NUM_THREADS=1", "MKL_NUM_THREADS=1", "HOME=/tmp"]
    # not exec: the worker must not be PID 1 of the namespace, which ignores its own fatal signals;
    # the shell reports a death by signal N as exit status 128 + N (grade.py reads it back).
    lines.append("chroot \"$R\" " + " ".join(q(a) for a in env + drop + argv) + " && exit 0 || exit $?")
    flags = ["--mount", "--pid", "--fork", "--kill-child", "--net", "--ipc", "--uts", "--propagation", "private"]
    if how == "userns":
        flags = ["--user", "--map-root-user"] + flags
    return ["unshare", *flags, "--", "/bin/sh", "-c", "\n".join(lines)]


def exit_status(how: str, rc: int) -> int:
    """The worker's exit status as subprocess reports it (negative: killed by that signal)."""
    return 128 - rc if how != "audit" and 128 < rc < 128 + 65 else rc


def prepare_workdir(workdir: Path, writable: list[Path], how: str) -> None:
    """Let the worker (user nobody when run as root) read the work folder and write only
    `writable` (its output folder and progress files)."""
    if how != "root":
        return
    for dirpath, dirnames, filenames in os.walk(workdir):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    for p in writable:
        os.chown(p, NOBODY, NOBODY)
