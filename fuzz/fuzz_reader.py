"""Fuzz the readers, the scanner and the info/scan commands with structure-aware mutators.

The property, for every input: opening it (``open_checkpoint``) returns or raises
CheckpointError, nothing else; ``scan`` and the ``info``/``info --json``/``scan``/
``scan --json`` commands then run to an exit status of 0, 1 or 3 with output that a
UTF-8 terminal can print; all of it within a time limit and a memory limit; and an
input whose payload a real loader runs (torch, asked in a child: fuzz/oracle.py) is
never called ``safe`` or left unreadable.

Seeds: ``python fuzz/make_seeds.py SEEDS`` writes small files of every format (made with
torch, onnx and safetensors) and the hostile corpus. Then:

  run      structure-aware mutation (zip, tar, .pt2, ONNX, safetensors and bare pickles,
           with byte-level havoc on top now and then), every input checked in a worker
           process with a per-input time limit (SIGALRM) and an address-space limit
           (RLIMIT_AS). Deterministic for a --seed.
  atheris  coverage-guided (libFuzzer) with the same mutators as its custom mutator (half
           of the mutants; libFuzzer's own the other half) and the same property;
           libFuzzer flags follow the corpus and seed folders.
  check    run the property on saved inputs (a finding's .input file), with a traceback.

Longer campaigns (each finding is saved once per signature under --out, with its
traceback, and the run goes on; exit status 1 if any finding is not --known):

  .venv/bin/python fuzz/make_seeds.py /tmp/seeds
  .venv/bin/python fuzz/fuzz_reader.py run --seconds 3600 --out /tmp/fuzz-found /tmp/seeds
  .venv/bin/python fuzz/fuzz_reader.py run --format pt2 --iterations 100000 --seed 7 \\
      --out /tmp/fuzz-found /tmp/seeds
  .venv/bin/python fuzz/fuzz_reader.py atheris /tmp/fuzz-corpus /tmp/seeds \\
      -max_total_time=3600 -timeout=20 -rss_limit_mb=3000 -artifact_prefix=/tmp/fuzz-found/
  .venv/bin/python fuzz/fuzz_reader.py check /tmp/fuzz-found/*.input

Signatures are ``Exception@file:function`` (the deepest frame in ckpt_inspector),
``hang@...``, ``unprintable@COMMAND``, ``exit-status@COMMAND`` and ``payload-missed@FORMAT
(LOADER)``. Run several ``run`` campaigns with different --seed values side by side to use
more cores. libFuzzer stops at its first crash: pass the findings already reported as
``atheris --known SIGNATURE`` so that it looks for new ones. The payload oracle needs torch;
--no-oracle leaves it out. tests/test_fuzz.py runs a short fixed-seed round of ``run`` for
every format and a few hundred atheris runs.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import io
import json
import os
import random
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mutators
import payloads
import zip_mutator

EXIT_STATUSES = (0, 1, 3)  # ok/safe, not safe, unreadable
EXTENSION = {"onnx": ".onnx", "pt2": ".pt2", "safetensors": ".safetensors", "tar": ".tar"}
SIDECAR = "weights.bin"  # external data ONNX mutants may point at, beside every input


# -- the property (runs in the worker) ---------------------------------------------------
class InputTimeout(BaseException):
    """The per-input time limit passed (raised from SIGALRM inside whatever was running).
    Not an Exception: an ``except Exception`` in the code under test must not swallow it."""


class CommandFailed(Exception):
    """A command's output cannot be printed, or it ended with an unexpected status."""

    def __init__(self, command: str, what: str, message: str):
        super().__init__(f"{command}: {message}")
        self.command, self.what = command, what


def check(path: str) -> dict:
    """Open, scan and run the info/scan commands on ``path``; what the reader said.

    Raises whatever the code under test raises, except CheckpointError from the reader."""
    from ckpt_inspector.cli import _common, inspect
    from ckpt_inspector.core import CheckpointError, open_checkpoint

    try:
        opened = open_checkpoint(path)
    except CheckpointError as err:
        opened = err
    ckpt = opened.partial if isinstance(opened, CheckpointError) else opened

    def cached_open(_path: str):  # the commands as the CLI runs them, on what was read
        if isinstance(opened, CheckpointError):
            raise opened
        return opened

    original = _common.open_file
    _common.open_file = cached_open  # not bulk_allocation: its gc.freeze would keep every input
    try:
        for command, as_json in (("info", False), ("info", True), ("scan", False),
                                 ("scan", True)):
            name = f"{command}{' --json' if as_json else ''}"
            args = argparse.Namespace(path=path, json=as_json)
            handler = inspect.cmd_info if command == "info" else inspect.cmd_scan
            # stdout as cli.main leaves it: UTF-8, lone surrogates (names may hold them)
            # written as backslash escapes
            raw = io.BytesIO()
            out = io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace")
            try:
                with contextlib.redirect_stdout(out), \
                        contextlib.redirect_stderr(io.StringIO()):
                    status = handler(args)
                out.flush()
            except UnicodeEncodeError as err:
                raise CommandFailed(name, "unprintable", f"the output cannot be written to "
                                    f"a UTF-8 stdout ({err.reason})") from None
            if status not in EXIT_STATUSES:
                raise CommandFailed(name, "exit-status", f"exit status {status}")
    finally:
        _common.open_file = original
    verdict = None
    if ckpt is not None:
        from ckpt_inspector.core.scan import scan

        verdict = scan(ckpt, str(opened) if isinstance(opened, CheckpointError) else None
                       ).verdict
    return {"verdict": verdict, "format": getattr(ckpt, "format", None),
            "error": str(opened) if isinstance(opened, CheckpointError) else None}


MUTATE_SECONDS = 2.0  # a mutation takes milliseconds; parsing a hostile seed may not


@contextlib.contextmanager
def time_limit(seconds: float):
    """InputTimeout from SIGALRM if the block runs longer than ``seconds``."""
    def on_alarm(_signum, _frame):
        raise InputTimeout(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def signature(exc: BaseException) -> str:
    """``Type@file:function`` of the deepest frame in ckpt_inspector (else the deepest);
    for a hang, of the reader's entry point (where the alarm lands inside it varies)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "ckpt_inspector" in f.filename] or frames
    if isinstance(exc, InputTimeout):
        readers = [f for f in ours if f"formats{os.sep}" in f.filename
                   and not f.filename.endswith("__init__.py")]
        ours = readers[:1] or ours
    where = ours[-1] if ours else None
    place = f"{Path(where.filename).name}:{where.name}" if where else "?"
    if isinstance(exc, CommandFailed):
        return f"{exc.what}@{exc.command}"
    kind = "hang" if isinstance(exc, InputTimeout) else type(exc).__name__
    return f"{kind}@{place}"


def worker(reply_fd: int, timeout: float, memory_mb: int) -> None:
    """Answer JSON lines ``{"path"}`` on stdin, one result line per input on ``reply_fd``
    (not stdout: the commands under test print there)."""
    import ckpt_inspector.cli  # imported before the memory limit is set
    import ckpt_inspector.core.formats  # noqa: F401

    replies = os.fdopen(reply_fd, "w")
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    limit = vm + (memory_mb << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    for line in sys.stdin:
        path = json.loads(line)["path"]
        try:
            with time_limit(timeout):
                reply = check(path)
        except BaseException as exc:
            reply = {"bug": signature(exc), "trace": traceback.format_exc()}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
        if "bug" in reply and reply["bug"].startswith(("hang@", "MemoryError@")):
            return  # an interrupted reader may leave a broken state behind: start afresh


class Worker:
    """The worker process: restarted after each finding, killed when it does not answer."""

    def __init__(self, timeout: float, memory_mb: int):
        self.timeout, self.memory_mb = timeout, memory_mb
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        read, write = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "_worker", str(write),
             str(self.timeout), str(self.memory_mb)], stdin=subprocess.PIPE, text=True,
            pass_fds=(write,))
        os.close(write)
        self.replies = os.fdopen(read)

    def __call__(self, path: str) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        try:
            self.proc.stdin.write(json.dumps({"path": path}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return self._died()
        ready, _, _ = select.select([self.replies], [], [], self.timeout + 60)
        line = self.replies.readline() if ready else ""
        if not ready:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            return {"bug": "hang@worker (no answer, killed)", "trace": ""}
        if not line:
            return self._died()
        reply = json.loads(line)
        if reply.get("bug", "").startswith(("hang@", "MemoryError@")):  # the worker exits
            self.proc.stdin.close()
            self.proc.wait()
            self.proc = None
        return reply

    def _died(self) -> dict:
        code = self.proc.wait()
        self.proc = None
        return {"bug": f"died@worker (status {code})", "trace": f"exit status {code}"}

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


# -- the payload oracle (runs in the driver) ---------------------------------------------
def mentions_payload(data: bytes, depth: int = 0) -> bool:
    """The marker's name is in the input, or in a (deflated) zip member of it."""
    marker = payloads.MARKER.encode()
    if marker in data:
        return True
    if depth < 2 and data[:4] == b"PK\x03\x04":
        z = zip_mutator.parse(data)
        return z is not None and any(mentions_payload(e.plain, depth + 1) for e in z.entries)
    return False


def _mentions(data: bytes) -> bool:
    try:
        return mentions_payload(data)
    except Exception:  # a zip too damaged to list: its plain bytes were searched already
        return False


def loaders_for(family: str, fmt: str | None) -> list[str]:
    """What a user would run on a file the reader read as ``fmt`` (None: unreadable, then
    by the look of its bytes): torch.load, torch.export.load, or -- for an archive of
    checkpoints -- torch.load of its members."""
    if fmt is None:  # unreadable: only a loader that runs the file itself counts
        fmt = {"zip": "torch-zip", "tar": "torch-legacy", "pt2": "pt2",
               "pickle": "pickle"}.get(family)
    if fmt in (None, "onnx", "safetensors"):
        return []
    if fmt == "pt2":
        return ["pt2", "torch"]
    if fmt == "archive":
        return ["torch", "archive"]
    return ["torch"]


# -- the campaign ------------------------------------------------------------------------
def load_seeds(folders: list[str]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = defaultdict(list)
    for folder in folders:
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if os.path.isfile(path) and os.path.getsize(path) < 4 << 20:
                data = Path(path).read_bytes()
                out[mutators.family(data)].append(data)
    return dict(out)


class Campaign:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="ckpt-fuzz-")
        Path(self.work, SIDECAR).write_bytes(bytes(range(256)) * 16)
        self.out = Path(args.out) if args.out else Path(self.work, "found")
        self.out.mkdir(parents=True, exist_ok=True)
        self.worker = Worker(args.timeout, args.memory_mb)
        from oracle import Oracle

        self.oracle = None if args.no_oracle else Oracle(args.oracle_timeout)
        self.known = list(args.known or [])
        self.findings: dict[str, dict] = {}
        self.seeds: dict[str, list[bytes]] = {}
        self.slow_seeds: set[int] = set()
        self.stats: dict[str, Counter] = defaultdict(Counter)

    def mutant(self, rng: random.Random, family: str, pool: list[bytes]) -> bytes:
        seed = rng.choice(self.seeds[family])
        slow = hash(seed) in self.slow_seeds
        try:
            with time_limit(MUTATE_SECONDS):
                return mutators.mutate(rng, seed, pool, 0.0 if slow else self.args.structured)
        except InputTimeout:
            # the library parsing the seed is slow on it (Python < 3.11.10's tarfile spends
            # minutes on a PAX header full of digits): byte-level mutation only, from now on
            self.slow_seeds.add(hash(seed))
            print(f"a {family} seed takes over {MUTATE_SECONDS} s to parse: havoc only for it",
                  file=sys.stderr)
        except Exception as exc:  # a bug of the fuzzer itself: reported, not fatal
            self.record(family, seed, {"bug": f"fuzzer-bug@{signature(exc)}",
                                       "trace": traceback.format_exc()})
        return mutators.havoc(rng, seed, pool)

    def one(self, family: str, data: bytes) -> None:
        path = os.path.join(self.work, "input" + EXTENSION.get(family, ""))
        Path(path).write_bytes(data)
        reply = self.worker(path)
        stats = self.stats[family]
        stats["inputs"] += 1
        if "bug" not in reply:
            stats[f"verdict {reply['verdict']}"] += 1
            if reply["verdict"] in ("safe", None) and self.oracle is not None \
                    and _mentions(data):
                loaders = loaders_for(family, reply["format"])
                ran = self.oracle(path, loaders) if loaders else None
                stats["oracle asked"] += 1
                if ran:
                    said = reply["verdict"] or f"unreadable ({reply['error']})"
                    where = reply["format"] or f"unreadable-{family}"
                    reply = {"bug": f"payload-missed@{where} ({ran})",
                             "trace": f"the reader said {said}; the {ran} loader ran the "
                                      "payload (created the marker)"}
        if "bug" in reply:
            self.record(family, data, reply)

    def record(self, family: str, data: bytes, reply: dict) -> None:
        sig = reply["bug"]
        known = any(fnmatch.fnmatchcase(sig, pattern) for pattern in self.known)
        self.stats[family]["known findings" if known else "findings"] += 1
        seen = self.findings.get(sig)
        if seen is not None:
            seen["count"] += 1
            if len(data) >= seen["size"]:
                return
        name = f"{sig.split('@')[0]}-{family}-{hashlib.sha1(data).hexdigest()[:12]}"
        (self.out / f"{name}.input").write_bytes(data)
        (self.out / f"{name}.txt").write_text(f"{sig}\n\n{reply['trace']}")
        if seen is not None:  # keep the smallest reproducer of each signature
            with contextlib.suppress(OSError):
                os.unlink(seen["file"])
                os.unlink(seen["file"][:-len(".input")] + ".txt")
        count = seen["count"] if seen else 1
        self.findings[sig] = {"family": family, "file": str(self.out / f"{name}.input"),
                              "size": len(data), "count": count, "known": known}
        if seen is None:
            print(f"{'known' if known else 'FOUND'} {sig} ({family}): "
                  f"{self.out / name}.input", file=sys.stderr)
            if not known and reply["trace"]:
                print(reply["trace"].rstrip()[-3000:], file=sys.stderr)

    def run(self, seeds: dict[str, list[bytes]]) -> int:
        args = self.args
        families = args.format or [f for f in mutators.FAMILIES if f in seeds]
        missing = [f for f in families if f not in seeds]
        if missing:
            print(f"no seeds for {', '.join(missing)}", file=sys.stderr)
            return 2
        self.seeds = seeds
        pool = [d for f in families for d in seeds[f]]
        rng = random.Random(args.seed)
        start = time.monotonic()
        try:
            if args.seconds is not None:
                while time.monotonic() - start < args.seconds:
                    family = rng.choice(families)
                    self.one(family, self.mutant(rng, family, pool))
            else:
                for family in families:
                    fam_rng = random.Random(f"{args.seed}/{family}")
                    for data in seeds[family]:  # the seeds themselves first
                        self.one(family, data)
                    for _ in range(args.iterations):
                        self.one(family, self.mutant(fam_rng, family, pool))
        finally:
            self.worker.close()
            if self.oracle is not None:
                self.oracle.close()
        summary = {"seconds": round(time.monotonic() - start, 1),
                   "families": {f: dict(self.stats[f]) for f in families},
                   "findings": self.findings}
        if args.summary:
            Path(args.summary).write_text(json.dumps(summary, indent=1))
        for f in families:
            s = self.stats[f]
            print(f"{f:12s} {s['inputs']:6d} inputs  " + ", ".join(
                f"{k} {v}" for k, v in sorted(s.items()) if k != "inputs"))
        new = [s for s, f in self.findings.items() if not f["known"]]
        print(f"{summary['seconds']} s; {len(self.findings)} distinct findings, "
              f"{len(new)} not known; inputs saved in {self.out}")
        if not args.out and not self.findings:
            shutil.rmtree(self.work, ignore_errors=True)
        return 1 if new else 0


# -- atheris -------------------------------------------------------------------------------
def run_atheris(argv: list[str], use_oracle: bool = True, known: list[str] | None = None
                ) -> int:
    """libFuzzer over the same property, with the structure-aware mutators as its custom
    mutator (half the time; libFuzzer's own byte mutations the other half)."""
    import atheris

    work = tempfile.mkdtemp(prefix="ckpt-fuzz-")
    Path(work, SIDECAR).write_bytes(bytes(range(256)) * 16)
    folders = [a for a in argv if not a.startswith("-")]
    pool = [d for ds in load_seeds(folders[1:] or folders).values() for d in ds]
    from oracle import Oracle

    oracle = Oracle() if use_oracle else None

    def is_known(sig: str) -> bool:
        return any(fnmatch.fnmatchcase(sig, pattern) for pattern in known or ())

    def test_one(data: bytes) -> None:
        family = mutators.family(data)
        path = os.path.join(work, "input" + EXTENSION.get(family, ""))
        Path(path).write_bytes(data)
        try:
            reply = check(path)
        except Exception as exc:
            if is_known(signature(exc)):
                return
            raise
        if oracle and reply["verdict"] in ("safe", None) and _mentions(data):
            ran = oracle(path, loaders_for(family, reply["format"]))
            where = reply["format"] or f"unreadable-{family}"
            if ran and not is_known(f"payload-missed@{where} ({ran})"):
                raise AssertionError(f"payload-missed@{where} ({ran}): the reader said "
                                     f"{reply['verdict']}, the loader ran the payload")

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.5:
            return atheris.Mutate(data, max_size)
        try:
            with time_limit(MUTATE_SECONDS):  # see Campaign.mutant
                return mutators.mutate(rng, data, pool)[:max_size]
        except InputTimeout:
            return atheris.Mutate(data, max_size)

    with atheris.instrument_imports(include=["ckpt_inspector"]):
        import ckpt_inspector.cli
        import ckpt_inspector.core.formats  # noqa: F401
    atheris.Setup([sys.argv[0], *argv], test_one, custom_mutator=custom_mutator)
    atheris.Fuzz()
    return 0


def run_check(files: list[str], timeout: float) -> int:
    """The property on saved inputs, in this process, with tracebacks."""
    status = 0
    for name in files:
        data = Path(name).read_bytes()
        family = mutators.family(data)
        work = tempfile.mkdtemp(prefix="ckpt-fuzz-check-")
        Path(work, SIDECAR).write_bytes(bytes(range(256)) * 16)
        path = os.path.join(work, "input" + EXTENSION.get(family, ""))
        Path(path).write_bytes(data)
        try:
            with time_limit(timeout):
                reply = check(path)
            print(f"{name}: {reply}")
        except BaseException as exc:
            status = 1
            print(f"{name}: {signature(exc)}")
            traceback.print_exc()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return status


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fuzz_reader.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="structure-aware mutation, deterministic for a --seed")
    run.add_argument("seeds", nargs="+", metavar="SEED_DIR")
    run.add_argument("--format", action="append", choices=mutators.FAMILIES,
                     help="fuzz only this format (repeatable; default: every seeded format)")
    how_long = run.add_mutually_exclusive_group()
    how_long.add_argument("--iterations", type=int, default=1000,
                          help="mutants per format, after the seeds themselves (default 1000)")
    how_long.add_argument("--seconds", type=float, help="run this long, formats at random")
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument("--out", help="folder for findings (default: a temporary folder)")
    run.add_argument("--timeout", type=float, default=20.0,
                     help="seconds allowed per input (default 20)")
    run.add_argument("--memory-mb", type=int, default=1024,
                     help="address space the reader may add per input (default 1024)")
    run.add_argument("--structured", type=float, default=0.9,
                     help="share of structure-aware mutations, the rest byte havoc (0.9)")
    run.add_argument("--no-oracle", action="store_true",
                     help="do not ask torch (in a child) whether a payload runs")
    run.add_argument("--oracle-timeout", type=float, default=10.0,
                     help="seconds a loader may take in the oracle (default 10; torch itself "
                          "hangs on some inputs, such as a tar member that is a FIFO)")
    run.add_argument("--known", action="append", metavar="SIGNATURE",
                     help="a finding already reported (a signature, * and ? allowed): "
                          "counted, not a failure (repeatable)")
    run.add_argument("--summary", help="write per-format counts and findings as JSON here")
    ath = sub.add_parser("atheris", help="coverage-guided: SEED_DIR... then libFuzzer flags")
    ath.add_argument("--no-oracle", action="store_true",
                     help="do not ask torch (in a child) whether a payload runs")
    ath.add_argument("--known", action="append", metavar="SIGNATURE",
                     help="a finding already reported (* and ? allowed): not a crash")
    ath.add_argument("rest", nargs=argparse.REMAINDER,
                     help="the corpus folder (new inputs go there), seed folders, then "
                          "libFuzzer flags")
    chk = sub.add_parser("check", help="run the property on saved inputs")
    chk.add_argument("files", nargs="+")
    chk.add_argument("--timeout", type=float, default=20.0)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        worker(int(argv[1]), float(argv[2]), int(argv[3]))
        return 0
    if argv[:1] == ["--random"] and len(argv) > 2:  # the old spelling
        argv = ["run", "--seconds", argv[1], *argv[2:]]
    args = _parser().parse_args(argv)
    if args.command == "run":
        return Campaign(args).run(load_seeds(args.seeds))
    if args.command == "atheris":
        return run_atheris(args.rest, not args.no_oracle, args.known)
    return run_check(args.files, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
