"""The torch oracle: does a real loader run the payload in this file?

The fuzzer asks it only about inputs the reader called ``safe`` (or could not read at
all) although they mention the payload's marker. A server process imports torch once;
each question forks a child that, in a scratch folder, under a memory limit and a time
limit, with its output thrown away, runs what a user would run on the file:
``torch.load(weights_only=False)``, ``torch.export.load``, or -- for an archive --
``torch.load`` of each member named like a checkpoint. The payloads create
:data:`payloads.MARKER` in the working folder, so "it ran" is a file in that folder.

This is the only place the fuzzer runs a loader on hostile bytes, always in a child.

    python fuzz/oracle.py FILE [torch|pt2|archive ...]    # ask once, by hand
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import payloads

LOADERS = ("torch", "pt2", "archive")
CHECKPOINT_NAMES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".tar", ".pt2")


def _load(path: str, loader: str) -> None:
    import io
    import tarfile
    import warnings
    import zipfile

    import torch

    warnings.simplefilter("ignore")
    if loader == "torch":
        torch.load(path, weights_only=False, map_location="cpu")
    elif loader == "pt2":
        torch.export.load(path)
    else:  # an archive: what a user extracts and loads
        members: list[tuple[str, bytes]] = []
        try:
            with zipfile.ZipFile(path) as zf:
                members = [(i.filename, zf.read(i)) for i in zf.infolist()]
        except Exception:
            try:
                with tarfile.open(path, "r:") as tar:
                    for m in tar.getmembers():
                        f = tar.extractfile(m)
                        if f is not None:
                            members.append((m.name, f.read()))
            except Exception:
                return
        for name, data in members:
            if name.lower().endswith(CHECKPOINT_NAMES):
                try:
                    torch.load(io.BytesIO(data), weights_only=False, map_location="cpu")
                except Exception:
                    continue


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def ask(path: str, loaders: list[str], timeout: float = 10.0) -> str | None:
    """The first loader (of ``loaders``) that ran the payload, or None. Run in the server:
    every loader gets a fresh child and a fresh scratch folder."""
    for loader in loaders:
        scratch = tempfile.mkdtemp(prefix="ckpt-oracle-")
        try:
            pid = os.fork()
            if pid == 0:  # the child: never returns
                try:
                    os.chdir(scratch)
                    limit = _vm_bytes() + (4 << 30)
                    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
                    null = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(null, 1)
                    os.dup2(null, 2)
                    signal.alarm(int(timeout))
                    _load(path, loader)
                except BaseException:
                    pass
                os._exit(0)
            end = time.monotonic() + timeout + 1
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > end:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.01)
            if os.path.exists(os.path.join(scratch, payloads.MARKER)):
                return loader
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return None


def serve() -> None:
    """Answer JSON lines ``{"path", "loaders"}`` on stdin with ``{"ran": loader|null}``."""
    # imported once, before the children fork (torch.export.load's modules take seconds)
    import torch
    import torch._export.serde.serialize
    import torch.export.pt2_archive._package  # noqa: F401

    sys.stdout.write('{"ready": true}\n')
    sys.stdout.flush()
    for line in sys.stdin:
        req = json.loads(line)
        ran = ask(req["path"], req["loaders"], req.get("timeout", 10.0))
        sys.stdout.write(json.dumps({"ran": ran}) + "\n")
        sys.stdout.flush()


class Oracle:
    """The server, started on first use (importing torch takes seconds)."""

    def __init__(self, timeout: float = 10.0):
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None

    def __call__(self, path: str, loaders: list[str]) -> str | None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--serve"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())
            assert json.loads(self.proc.stdout.readline())["ready"]
        self.proc.stdin.write(json.dumps({"path": os.path.abspath(path), "loaders": loaders,
                                          "timeout": self.timeout}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["ran"]

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
            self.proc = None


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        import torch  # noqa: F401

        print(ask(sys.argv[1], sys.argv[2:] or list(LOADERS)))
