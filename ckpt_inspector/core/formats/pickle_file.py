"""A bare pickle stream (``.pkl``, old ``.bin`` files), read with the same interpreter.

``pickle.load`` and ``torch.load`` (on a file that is neither a zip nor a tar
archive) both start by unpickling whatever the first bytes hold, so a file is a
pickle whenever its first opcode is one and the interpreter gets through its
first bytes: a stream may start with any opcode (``BININT2 ... POP`` before the
real object), not only with ``PROTO``. When the first pickle evaluates to
torch's magic number the rest is read as the legacy format, as torch does.

A tensor pickled with plain ``pickle.dump`` carries its storage as a torch
checkpoint nested in bytes (``torch.storage._load_from_bytes(b'...')``); that
nested checkpoint is read the way ``torch.load`` reads bytes, without running
anything.
"""

from __future__ import annotations

import pickletools
from typing import Any

from ckpt_inspector.core.errors import CheckpointError, PickleError
from ckpt_inspector.core.findings import NEEDS_TRUST, Finding
from ckpt_inspector.core.formats import _joblib, torch_legacy, torch_zip
from ckpt_inspector.core.formats._common import build_tree, new_checkpoint, run_pickle
from ckpt_inspector.core.io.source import Source
from ckpt_inspector.core.pickle import vm as pickle_vm
from ckpt_inspector.core.pickle.values import LazyBytes, PickleResult
from ckpt_inspector.core.progress import Cancelled
from ckpt_inspector.core.tree import Checkpoint, Node

NAME = "pickle"
# every opcode of protocols 0-5 (pickletools.opcodes); 0x97/0x98 (out-of-band buffers)
# only load with a buffers argument, which neither pickle.load nor torch.load passes
OPCODES = frozenset(ord(op.code) for op in pickletools.opcodes) - {0x97, 0x98}
SNIFF_BYTES = 64 << 10


def sniff(head: bytes) -> bool:
    """Whether a loader would unpickle these bytes without failing on the first of them:
    the first byte is an opcode and the interpreter runs through ``head`` (at most
    :data:`SNIFF_BYTES` of it) without an error other than running out of data."""
    head = bytes(head[:SNIFF_BYTES])
    if not head or head[0] not in OPCODES:
        return False
    ended, err = _interpret(head)
    if err is None:
        return ended
    # a bound of this reader (a LONG4 over 1 MiB, deep tuples): pickle.load reads on; a
    # frame that loaders read otherwise (one of them may read on from there)
    return err.limit or _cut_short(err, head) or acted(err.result) or (
        err.result is not None and any(a.code == "frame-mismatch" for a in err.result.anomalies))


def runs_past(head: bytes) -> bool:
    """Whether ``head``, the start of a longer file, is a pickle that goes on past its end:
    the interpreter runs out of data there (or past one of its own bounds), having failed
    on nothing else. What the rest of the file makes such a pickle do is not known."""
    if not head or head[0] not in OPCODES:
        return False
    ended, err = _interpret(head)
    return not ended and err is not None and (err.limit or _cut_short(err, head))


def _interpret(head: bytes) -> tuple[bool, PickleError | None]:
    """Run the interpreter on ``head``: (whether it read a whole pickle, the error it
    failed with where that is one of the stream's)."""
    try:
        try:
            pickle_vm.load(head)
        except PickleError as err:
            if err.reason != pickle_vm.FRAME_TOO_LONG:
                raise
            pickle_vm.load(head, python=True)  # joblib.load's unpickler reads on
    except PickleError as err:
        return False, err
    except Cancelled:
        raise
    except Exception:  # any other failure of the interpreter: not a stream it reads
        return False, None
    return True, None


def acted(result: PickleResult | None) -> bool:
    """Whether a stream did something before it broke, as a loader would run it: called
    anything, or imported a name that could be a module's (``pickle.load`` raises only
    after the call or the import)."""
    if result is None:
        return False
    if result.calls:
        return True
    return any(g.literal and all(isinstance(part, str) and part and all(
        p.isidentifier() for p in part.split(".")) for part in (g.module, g.name))
        for g in result.globals)


def _cut_short(err: PickleError, head: bytes) -> bool:
    """Whether the interpreter failed only because ``head`` ends where the file goes on:
    an opcode or argument running past the end (a truncated stream, a missing newline,
    a frame or length longer than what is there)."""
    reason, at = err.reason, err.offset
    if reason.startswith("truncated pickle: missing end of line") and at is not None:
        # a text argument: printable ASCII up to the end of what was read (UNICODE's
        # raw-unicode-escape may hold any byte; STRING's starts with a quote)
        op, rest = head[at], head[at + 1:]
        if op == ord("V"):
            return True
        return all(0x20 <= b < 0x7F for b in rest) and (op != ord("S")
                                                        or rest[:1] in (b"'", b'"'))
    if reason.startswith(("truncated pickle", "frame length is larger")):
        return True
    # a fixed-size argument cut by the end reads as a stack underflow: the opcode sits
    # in the last 9 bytes (8-byte argument and the opcode itself)
    return at is not None and at >= len(head) - 9


def load_embedded(ckpt: Checkpoint, raw: bytes | LazyBytes, label: str) -> Any:
    """The inert value of ``torch.load(io.BytesIO(raw))``: a zip, or else (never a tar:
    only real files are tried as tar) the legacy stream, whose first pickle runs whatever
    it is. Its pickles are recorded on ``ckpt`` as run."""
    data = raw.tobytes() if isinstance(raw, LazyBytes) else bytes(raw)
    where = f"{label}embedded#{len(ckpt.embedded) + 1}/"
    try:
        if torch_zip.sniff(data[:8]):
            return torch_zip.load_nested(ckpt, data, where)
        return torch_legacy.load_nested(ckpt, data, where)
    except CheckpointError as err:
        ckpt.warnings.append(f"embedded checkpoint: {err}")
        return None


class _Nested:
    """Reads a checkpoint embedded as bytes that the reader did not read already."""

    def __init__(self, ckpt: Checkpoint, label: str = ""):
        self.ckpt = ckpt
        self.label = label

    def __call__(self, raw: bytes | LazyBytes) -> Any:
        return load_embedded(self.ckpt, raw, self.label)


def read(src: Source) -> Checkpoint:
    ckpt = new_checkpoint(src, "pickle")
    try:
        ckpt.root = read_stream(ckpt, src, "")
    except CheckpointError as err:
        raise _not_a_pickle(ckpt, err) from None
    return ckpt


def _not_a_pickle(ckpt: Checkpoint, err: CheckpointError) -> CheckpointError:
    """A stream that breaks before it imports or calls anything does nothing when a
    loader runs it: bytes that only looked like a pickle at first (random data, text)
    are not a checkpoint. Any other failure keeps what was read, for the scan."""
    if len(ckpt.pickles) == 1 and ckpt.pickles[0].error and not ckpt.pickles[0].limit:
        result = ckpt.pickles[0].result  # (past a bound of this reader, a loader reads on)
        if not (result.globals or result.calls or result.anomalies):
            return CheckpointError(f"not a checkpoint: the format is not recognised (the "
                                   f"bytes break as a pickle: {ckpt.pickles[0].error})")
    return err


def read_stream(ckpt: Checkpoint, src: Source, label: str) -> Node:
    """What a loader does with a stream: run its first pickle; when that evaluates (or may
    evaluate) to torch's magic number and more bytes follow, go on as the legacy format."""
    buffer = src.buffer()
    count = len(ckpt.pickles)
    try:
        first = run_pickle(ckpt, buffer, label, expect_end=False, end_hint=len(buffer))
    except CheckpointError:
        if len(ckpt.pickles) <= count:
            raise
        try:
            if pickle_vm.FRAME_TOO_LONG not in str(ckpt.pickles[count].error):
                raise
            # pickle.load fails at a frame longer than the data; Python's unpickler reads on
            first = _python_reading(ckpt, buffer, label, count)
        except CheckpointError:
            if len(ckpt.pickles) > count and _joblib.applies(ckpt.pickles[count].result):
                return _joblib.read_stream(ckpt, src, label, ckpt.pickles[count], False)
            raise
    record = ckpt.pickles[count]
    legacy = torch_legacy.equals(first.value, torch_legacy.MAGIC_NUMBER) is not False \
        and first.end < len(src.data)
    if _joblib.applies(first):  # joblib.load reads arrays' bytes where pickle.load breaks
        # (as torch.load reads it, a legacy file only if it is the number itself: an object
        # array's value compares unequal, and whatever computes it is scanned)
        literal = torch_legacy.equals(first.value, torch_legacy.MAGIC_NUMBER) is True
        return _joblib.read_stream(ckpt, src, label, record, legacy and literal)
    if legacy:
        if not label:
            ckpt.format = "torch-legacy"
        record.member = f"{label}magic number"
        for g in first.globals:
            g.member = record.member
        return torch_legacy.read_into(ckpt, src, label, first)
    record.trailing = len(src.data) - first.end
    if not label:
        ckpt.metadata["pickle protocol"] = first.protocol
    return build_tree(ckpt, first.value, nested_loader=_Nested(ckpt, label))


def _python_reading(ckpt: Checkpoint, buffer: Any, label: str, count: int) -> PickleResult:
    """A stream pickle.load and torch.load refuse at a frame longer than the data, which
    Python's own unpickler (joblib.load's) reads on from: read as that one reads it."""
    del ckpt.pickles[count:]
    ckpt.findings.append(Finding(
        NEEDS_TRUST, "frame-mismatch", "a frame longer than the data: pickle.load and "
        "torch.load fail there, Python's own unpickler (joblib.load's) reads on, as here",
        label.rstrip("/") or None))
    return run_pickle(ckpt, buffer, label, expect_end=False, end_hint=len(buffer),
                      python=True)


def read_into(ckpt: Checkpoint, src: Source, label: str, executed: bool = True) -> Node:
    if executed:
        return read_stream(ckpt, src, label)
    result = run_pickle(ckpt, src.buffer(), label, executed=False)
    return build_tree(ckpt, result.value, nested_loader=_Nested(ckpt, label))
