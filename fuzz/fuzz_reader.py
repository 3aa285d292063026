"""Fuzz the reader and the scanner: any input must end in a result or a CheckpointError.

    python fuzz/fuzz_reader.py SEED_DIR [SEED_DIR...] [libFuzzer flags]    # atheris
    python fuzz/fuzz_reader.py --random SECONDS SEED_DIR...              # no atheris

With atheris (coverage-guided, libFuzzer flags such as ``-max_total_time=60
-timeout=10 -rss_limit_mb=3000``), new inputs go into the first seed folder and
a crash is written as ``crash-*``. ``--random`` mutates the seeds at random for
the given time (byte flips, cuts, splices, repeated chunks) where atheris is not
installed. The test suite runs a bounded round; longer rounds are for people:

    .venv/bin/python tests/corpus.py /tmp/seeds && \\
    .venv/bin/python fuzz/fuzz_reader.py /tmp/fuzz-out /tmp/seeds -max_total_time=3600
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
import traceback

WORK = os.path.join(tempfile.mkdtemp(prefix="ckpt-fuzz-"), "input")
EXTENSIONS = ("", ".onnx")  # ONNX is also picked by extension


def check(data: bytes) -> None:
    """Read ``data`` as every reader would: anything but CheckpointError is a bug."""
    from ckpt_inspector.cli import info_json
    from ckpt_inspector.core import CheckpointError, open_checkpoint
    from ckpt_inspector.core.scan import scan

    for ext in EXTENSIONS:
        path = WORK + ext
        with open(path, "wb") as f:
            f.write(data)
        try:
            # not inside bulk_allocation: its gc.freeze would keep every input's garbage
            ckpt = open_checkpoint(path)
            scan(ckpt)
            info_json(ckpt)
        except CheckpointError as err:
            if err.partial is not None:
                scan(err.partial, str(err))


def seeds(folders: list[str]) -> list[bytes]:
    out = []
    for folder in folders:
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if os.path.isfile(path) and os.path.getsize(path) < 4 << 20:
                with open(path, "rb") as f:
                    out.append(f.read())
    return out or [b""]


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(6)
        if op == 0 and buf:  # flip bytes
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 1 and buf:  # cut
            buf = buf[: rng.randrange(len(buf))]
        elif op == 2:  # splice another seed in
            other = rng.choice(pool)
            if other:
                a = rng.randrange(len(other))
                b = min(len(other), a + rng.randint(1, 512))
                at = rng.randrange(len(buf) + 1)
                buf[at:at] = other[a:b]
        elif op == 3 and buf:  # repeat a chunk
            a = rng.randrange(len(buf))
            b = min(len(buf), a + rng.randint(1, 64))
            buf[a:a] = buf[a:b] * rng.randint(2, 50)
        elif op == 4 and buf:  # interesting integers
            at = rng.randrange(len(buf))
            buf[at:at + 4] = rng.choice([b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80",
                                         b"\xff\xff\xff\xff", b"\x00\x00\x00\x00"])
        elif op == 5 and buf:  # drop a chunk
            a = rng.randrange(len(buf))
            del buf[a:a + rng.randint(1, 64)]
    return bytes(buf)


def run_random(seconds: float, folders: list[str], seed: int = 0) -> int:
    rng = random.Random(seed)
    pool = seeds(folders)
    end = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < end:
        data = mutate(rng, rng.choice(pool), pool)
        try:
            check(data)
        except Exception:
            crash = os.path.join(os.path.dirname(WORK), f"crash-{runs}")
            with open(crash, "wb") as f:
                f.write(data)
            traceback.print_exc()
            print(f"crash after {runs} runs, input saved to {crash}", file=sys.stderr)
            return 1
        runs += 1
    print(f"random fuzz: {runs} inputs in {seconds:.0f} s, no crash")
    return 0


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--random":
        return run_random(float(sys.argv[2]), sys.argv[3:])
    import atheris

    with atheris.instrument_imports(include=["ckpt_inspector"]):
        import ckpt_inspector.cli
        import ckpt_inspector.core.formats  # noqa: F401
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
