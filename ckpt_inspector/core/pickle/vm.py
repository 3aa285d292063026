"""A pickle interpreter that never runs the file's code.

It is driven by the opcodes alone. Where ``pickle.Unpickler`` would import a
module (``GLOBAL``, ``STACK_GLOBAL``, ``INST``), this interpreter records a
:class:`GlobalRef`; where it would call something (``REDUCE``, ``NEWOBJ``,
``OBJ``, ``INST``), it records a :class:`Call`; ``BUILD`` stores the state on
the call; persistent ids become whatever the caller's ``persistent_load``
returns (by default a :class:`PersistentRef`). Nothing is imported and nothing
is called, so the result is inert: plain Python containers and scalars plus
these records (:mod:`values`).

Hostile streams end in a :class:`PickleError` with the byte offset, never in
a crash: the interpreter does not recurse, every length is checked against
the data before it is read, and tuples (the only containers whose hashing
recurses in C) may not nest deeper than :data:`MAX_TUPLE_DEPTH`.

The thirty-odd opcodes ``torch.save`` writes for each tensor of a state_dict are read in
one step where they can be (:mod:`fused`), with exactly their effects.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import contextlib
import contextvars
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

from ckpt_inspector.core.errors import PickleError
from ckpt_inspector.core.io.cancel import current_token
from ckpt_inspector.core.pickle.fused import LoadFailed, tensor_run
from ckpt_inspector.core.pickle.values import (
    Anomaly,
    Builds,
    Call,
    ExtensionRef,
    GlobalRef,
    LazyBytes,
    PersistentLoad,
    PersistentRef,
    PickleResult,
    SafeKey,
    safe_key,
)
from ckpt_inspector.core.progress import Cancelled, Progress, reporter

MAX_TUPLE_DEPTH = 1000
MAX_LONG_BYTES = 1 << 20
# torch writes ~30 opcodes per tensor: 25M opcodes is ~800,000 tensors, ~15 s here
MAX_OPS = 25_000_000
# a safety net for whatever still makes a stream slow (hash-collision attacks on keys):
# checked every few thousand opcodes and after every costly hash, so no one step starves it
MAX_SECONDS = 15.0
_CHECK_EVERY = 1 << 12
# a stream this long that takes longer than this to read says how far it is (to whoever
# listens: the window's tab and status bar), then again at most every REPORT_EVERY s
REPORT_BYTES = 4 << 20
REPORT_AFTER = 0.25
REPORT_EVERY = 0.1
# a dict key or set member whose hash would visit more items than this is refused: tuple
# hashes are not cached, and memo references let a small stream name an enormous key
MAX_KEY_ITEMS = 1 << 20
# torch.save and pickle.dump memoize each imported name; TorchScript names a class per
# module: tens of thousands of imports is a flood meant to exhaust the reader
MAX_GLOBALS = 50_000
_WORK_CHECK = 1 << 20
_P = (1 << 61) - 1  # CPython reduces numeric hashes modulo this prime
HIGHEST_PROTOCOL = 5
# bytes payloads at least this long are not copied out of the stream
LAZY_BYTES_THRESHOLD = 1 << 16


_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "pickle_deadline", default=None)


@contextlib.contextmanager
def deadline(seconds: float = MAX_SECONDS) -> Iterator[None]:
    """One time limit shared by every pickle read inside the block (a file holding many
    pickles is bounded as a whole, not each of them)."""
    token = _DEADLINE.set(time.monotonic() + seconds if _DEADLINE.get() is None
                          else _DEADLINE.get())
    try:
        yield
    finally:
        _DEADLINE.reset(token)


@contextlib.contextmanager
def not_counted() -> Iterator[None]:
    """Work inside the block that reads no pickle (building a tree of 100,000s of tensors)
    moves the shared time limit on by as long as it took: the limit is on reading pickles,
    and a large checkpoint must not run out of it before its other records are read."""
    began = time.monotonic()
    try:
        yield
    finally:
        shared = _DEADLINE.get()
        if shared is not None:
            _DEADLINE.set(shared + time.monotonic() - began)


def past_deadline() -> bool:
    """Whether the time limit shared by this block's pickle reads has passed (a loop over
    many small pickles stops there rather than failing each of them)."""
    shared = _DEADLINE.get()
    return shared is not None and time.monotonic() > shared


_UNPACK_I = struct.Struct("<i").unpack_from
_UNPACK_H = struct.Struct("<H").unpack_from
_UNPACK_IU = struct.Struct("<I").unpack_from
_UNPACK_Q = struct.Struct("<Q").unpack_from
_UNPACK_D = struct.Struct(">d").unpack_from

_MARK = object()
FRAME_TOO_LONG = "frame length is larger than the data"  # Python's unpickler reads on
AfterBuild = Callable[[Any, int, int], "tuple[int, Any] | None"]


def _name(opcode: int) -> str:
    return {0x63: "GLOBAL", 0x93: "STACK_GLOBAL", 0x69: "INST"}.get(opcode, hex(opcode))


def load(
    data: bytes | Any,
    start: int = 0,
    *,
    persistent_load: PersistentLoad | None = None,
    lazy_bytes_threshold: int = LAZY_BYTES_THRESHOLD,
    end_hint: int | None = None,
    after_build: AfterBuild | None = None,
    python: bool = False,
) -> PickleResult:
    """Interpret one pickle in ``data`` (``bytes`` or ``mmap``) starting at ``start``.

    Reads up to and including the first ``STOP`` and returns the inert value
    with every global, call and anomaly seen. Raises :class:`PickleError` on a
    malformed, truncated or hostile stream. ``end_hint``: where the stream should end
    (a zip member's end: the data runs on past it); a long read says how far it is (to
    :func:`~ckpt_inspector.core.progress.reporter`) only where it is given.
    ``after_build(obj, pos, frame_end)``: a loader's own BUILD (joblib's reads array bytes
    that follow it); it returns None, or where the stream goes on and what replaces
    ``obj`` on the stack. ``python``: read as Python's own ``pickle._Unpickler`` reads
    (joblib's, and any loader built on it; implied by ``after_build``): a frame longer
    than the data holds what there is, INT's text is ``int(text, 0)``.
    """
    partial = PickleResult(None, start, start, 0)
    try:
        return _run(data, start, persistent_load, lazy_bytes_threshold, partial, end_hint,
                    after_build, python or after_build is not None)
    except PickleError as err:
        err.result = partial
        raise
    except RecursionError:  # pragma: no cover - defensive; the VM does not recurse
        err = PickleError("structure nested too deeply")
    except MemoryError:
        err = PickleError("stream needs more memory than is available")
    except (ValueError, OverflowError, ArithmeticError, AttributeError, LookupError,
            TypeError) as exc:  # never lose what was read to an odd value
        err = PickleError(f"malformed stream ({type(exc).__name__}: {exc})")
    err.result = partial
    raise err


def _run(data: Any, start: int, persistent_load: PersistentLoad | None,
         lazy_threshold: int, result: PickleResult, end_hint: int | None,
         after_build: AfterBuild | None, python: bool) -> PickleResult:
    # The hot loop uses plain locals only; rare errors surface as IndexError/KeyError/
    # struct.error/TypeError from the fast path and are turned into PickleError below.
    try:
        return _loop(data, start, len(data), persistent_load, lazy_threshold, result,
                     end_hint, after_build, python)
    except _Stop as stop:
        raise stop.take() from None


class _Stop(Exception):
    def __init__(self, error: PickleError):
        super().__init__()  # not in args: see take
        self.error: PickleError | None = error

    def take(self) -> PickleError:
        """The error, let go of: it is raised while this is handled, so keeps this as its
        context, and the two referring to each other would keep the interpreter's frame
        (its stack and memo) alive as cyclic garbage, which no collection frees while the
        readers pause the collector, and none at all once it is frozen with what they
        read (gcpause): a few KB for each record of an archive tried as a pickle."""
        error, self.error = self.error, None
        assert error is not None
        return error


def _loop(data: Any, pos: int, size: int, persistent_load: PersistentLoad | None,
          lazy_threshold: int, result: PickleResult, end_hint: int | None,
          after_build: AfterBuild | None, python: bool) -> PickleResult:
    stack: list[Any] = []
    metastack: list[list[Any]] = []
    memo: dict[int, Any] = {}
    tuple_depth: dict[int, int] = {}
    tuple_cost: dict[int, int] = {}  # nested tuples: items their hash visits
    hashed: dict[int, Any] = {}  # id of a big key -> its hashable form (ids kept alive)
    alive: list[Any] = []
    work = [0]
    globals_ = result.globals
    calls = result.calls
    anomalies = result.anomalies
    rare = result.rare_opcodes
    proto = 0
    frame_end = -1
    limit = size  # min(frame end, size): past it the slow path at the loop top runs
    unpack_i, unpack_h, unpack_iu, unpack_q, unpack_d = (
        _UNPACK_I, _UNPACK_H, _UNPACK_IU, _UNPACK_Q, _UNPACK_D)

    def fail(msg: str, at: int) -> _Stop:
        return _Stop(PickleError(msg, at))

    def bound(msg: str, at: int) -> _Stop:  # a limit of this reader, not of the stream
        return _Stop(PickleError(msg, at, limit=True))

    def deep(t: tuple[Any, ...], at: int) -> tuple[Any, ...]:
        """Record a tuple's nesting depth and the items hashing it visits; refuse depths
        whose hashing could overflow C."""
        depth = 1
        cost = len(t)
        for item in t:
            if type(item) is tuple:
                d = tuple_depth.get(id(item), 1) + 1
                if d > depth:
                    depth = d
                cost += tuple_cost.get(id(item), len(item))
        if depth > MAX_TUPLE_DEPTH:
            raise bound(f"tuples nested deeper than {MAX_TUPLE_DEPTH}", at)
        if depth > 1:
            tuple_depth[id(t)] = depth
            tuple_cost[id(t)] = cost
            alive.append(t)
        return t

    def hashable(key: Any, at: int) -> Any:
        t = type(key)
        big = t is tuple or (t is int and not -_P < key < _P)
        if big:
            cached = hashed.get(id(key))
            if cached is not None:
                return cached
            cost = tuple_cost.get(id(key), len(key)) if t is tuple else 1
            if cost > MAX_KEY_ITEMS:
                raise bound(f"a dict key or set member of {cost:,} items: too costly to hash",
                           at)
            work[0] += cost
            if work[0] > _WORK_CHECK:
                work[0] = 0
                if time.monotonic() > deadline_at:
                    raise bound(f"reading the stream took more than {MAX_SECONDS:.0f} s: "
                               "refused (a hash-collision or similar attack?)", at)
        value = safe_key(key)
        if big and type(value) is tuple and len(value) > 64:
            value = SafeKey(value)  # its hash computed once, not on every insert
        try:
            hash(value)
        except TypeError:
            raise fail(f"unhashable {type(value).__name__} as a dict key or set member",
                       at) from None
        if big:
            hashed[id(key)] = value
            alive.append(key)
        return value

    def checked(key: Any, at: int) -> None:
        """A key stored on an object for its own ``__setitem__``: its cost is checked and
        charged like a dict key's, but it stays as written (it may not be hashable)."""
        try:
            hashable(key, at)
        except _Stop as stop:
            if "unhashable" not in str(stop.error):
                raise

    def add_global(module: Any, name: Any, opcode: int, at: int) -> GlobalRef:
        literal = isinstance(module, str) and isinstance(name, str)
        original = None
        if literal and proto < 3:
            # what Python's Unpickler(fix_imports=True) does for Python 2 names
            if (module, name) in _compat_pickle.NAME_MAPPING:
                original = (module, name)
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                original = (module, name)
                module = _compat_pickle.IMPORT_MAPPING[module]
        if len(globals_) >= MAX_GLOBALS:
            raise bound(f"more than {MAX_GLOBALS:,} imports in one stream: refused (pickles "
                       "import each name once and then reuse it)", at)
        ref = GlobalRef(module, name, at, _name(opcode), literal, original)
        globals_.append(ref)
        if not literal:
            anomalies.append(Anomaly(
                "dynamic-import",
                f"{_name(opcode)} imports a name that is not a literal string in the stream",
                at))
        return ref

    def text(raw: bytes, at: int, encoding: str = "utf-8") -> str:
        try:
            return raw.decode(encoding, "surrogatepass")
        except UnicodeDecodeError:
            raise fail("invalid UTF-8 in a string", at) from None

    def line_at(p: int, at: int, frame: int) -> bytes:
        end = data.find(b"\n", p)
        if end < 0:
            raise fail("truncated pickle: missing end of line", at)
        if end >= frame and (not anomalies or anomalies[-1].offset != at):
            # (frame: where the current frame ends, else the data's end)
            anomalies.append(Anomaly(
                "frame-mismatch", "a line runs past the end of its frame: pickle.load from a "
                "file it cannot peek into (torch.load's BytesIO) drops the frame's rest and "
                "reads the line from after it, pickle.loads reads on: they read other "
                "streams", at))
        return data[p:end]

    def bytes_value(p: int, n: int, kind: str, at: int) -> Any:
        if p + n > size:
            raise fail("truncated pickle: data ends inside an opcode", at)
        if n >= lazy_threshold:
            return LazyBytes(data, p, n, kind)
        value = bytes(data[p:p + n])
        return bytearray(value) if kind == "bytearray" else value

    def new_call(func: Any, args: Any, kind: str, at: int, kwargs: Any = None) -> Call:
        c = Call(func, args, kind, at, kwargs)
        calls.append(c)
        return c

    def persistent(pid: Any, at: int) -> Any:
        if persistent_load is None:
            return PersistentRef(pid, at)
        return persistent_load(pid, at)

    def truncated(at: int) -> _Stop:
        return fail("truncated pickle: data ends inside an opcode", at)

    op_pos = pos
    ops_left = MAX_OPS
    # the first opcode checks the deadline and the cancel token, then every few thousand:
    # a file of a million tiny pickles is bounded by the one deadline too
    check_at = MAX_OPS
    shared = _DEADLINE.get()
    deadline_at = time.monotonic() + MAX_SECONDS
    if shared is not None and shared < deadline_at:
        deadline_at = shared
    cancel = current_token()  # the window's Cancel stops a long read between two checks
    # progress where the stream's end is known (a zip member, a file that is one pickle)
    first, last = pos, min(size, end_hint if end_hint is not None else size)
    to = reporter() if end_hint is not None and last - first >= REPORT_BYTES else None
    report_at = time.monotonic() + REPORT_AFTER if to is not None else float("inf")
    try:
        while True:
            ops_left -= 1
            if ops_left <= check_at:
                if ops_left < 0:
                    raise bound(f"more than {MAX_OPS:,} opcodes: the stream is refused", pos)
                now = time.monotonic()
                if now > deadline_at:
                    raise bound(f"reading the stream took more than {MAX_SECONDS:.0f} s: "
                               "refused (a hash-collision or similar attack?)", pos)
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                if now >= report_at:
                    report_at = now + REPORT_EVERY
                    try:
                        to(Progress("MB of the pickle read",  # type: ignore[misc]
                                    (min(pos, last) - first) // 1_000_000,
                                    (last - first) // 1_000_000))
                    except Cancelled:
                        raise
                    except Exception:  # whoever listens failed: the read goes on, unheard
                        report_at = float("inf")
                check_at = max(ops_left - _CHECK_EVERY, -1)
            if pos >= limit:
                if frame_end >= 0 and pos >= frame_end:
                    if pos > frame_end:
                        anomalies.append(Anomaly("frame-mismatch",
                                                 "an opcode straddles the end of a frame", op_pos))
                    frame_end = -1
                    limit = size
                if pos >= size:
                    raise fail("truncated pickle: no STOP opcode", pos)
            op_pos = pos
            op = data[pos]
            pos += 1

            if op == 0x72:  # LONG_BINPUT
                memo[unpack_iu(data, pos)[0]] = stack[-1]
                pos += 4
            elif op == 0x68:  # BINGET
                stack.append(memo[data[pos]])
                pos += 1
            elif op == 0x4B:  # BININT1
                stack.append(data[pos])
                pos += 1
            elif op == 0x28:  # MARK
                metastack.append(stack)
                stack = []
            elif op == 0x58:  # BINUNICODE
                n = unpack_iu(data, pos)[0]
                pos += 4
                if pos + n > size:
                    raise truncated(op_pos)
                try:
                    key = data[pos:pos + n].decode("utf-8", "surrogatepass")
                except UnicodeDecodeError:
                    raise fail("invalid UTF-8 in a string", op_pos) from None
                stack.append(key)
                pos += n
                # a state_dict key, then the run torch.save writes for its tensor: one step
                try:
                    run = tensor_run(data, pos, limit, key, memo, calls, persistent_load, deep,
                                     tuple_depth, tuple_cost, alive, ops_left - check_at)
                except LoadFailed as failed:  # as the BINPERSID branch below would fail
                    op_pos, pos = failed.at, failed.at + 1
                    raise failed.error from None
                if run is not None:
                    stack.append(run[0])
                    pos = run[1]
                    ops_left -= run[2]
            elif op == 0x74:  # TUPLE
                items = stack
                stack = metastack.pop()
                t = tuple(items)
                for item in t:
                    if type(item) is tuple:
                        t = deep(t, op_pos)
                        break
                stack.append(t)
            elif op == 0x85:  # TUPLE1
                x = stack[-1]
                stack[-1] = deep((x,), op_pos) if type(x) is tuple else (x,)
            elif op == 0x52:  # REDUCE
                args = stack.pop()
                if type(args) is not tuple:
                    raise fail("REDUCE arguments are not a tuple", op_pos)
                c = Call(stack[-1], args, "reduce", op_pos)
                calls.append(c)
                stack[-1] = c
            elif op == 0x71:  # BINPUT
                memo[data[pos]] = stack[-1]
                pos += 1
            elif op == 0x6A:  # LONG_BINGET
                stack.append(memo[unpack_iu(data, pos)[0]])
                pos += 4
            elif op == 0x51:  # BINPERSID
                stack[-1] = (PersistentRef(stack[-1], op_pos) if persistent_load is None
                             else persistent_load(stack[-1], op_pos))
            elif op == 0x89:  # NEWFALSE
                stack.append(False)
            elif op == 0x88:  # NEWTRUE
                stack.append(True)
            elif op == 0x29:  # EMPTY_TUPLE
                stack.append(())
            elif op == 0x86:  # TUPLE2
                b = stack.pop()
                a = stack[-1]
                t = (a, b)
                stack[-1] = deep(t, op_pos) if type(a) is tuple or type(b) is tuple else t
            elif op == 0x87:  # TUPLE3
                c3 = stack.pop()
                b = stack.pop()
                a = stack[-1]
                t = (a, b, c3)
                stack[-1] = deep(t, op_pos) if (type(a) is tuple or type(b) is tuple
                                                or type(c3) is tuple) else t
            elif op == 0x8C:  # SHORT_BINUNICODE
                if op not in rare:
                    rare[op] = op_pos
                n = data[pos]
                pos += 1
                if pos + n > size:
                    raise truncated(op_pos)
                stack.append(text(data[pos:pos + n], op_pos))
                pos += n
            elif op == 0x4D:  # BININT2
                stack.append(unpack_h(data, pos)[0])
                pos += 2
            elif op == 0x4A:  # BININT
                stack.append(unpack_i(data, pos)[0])
                pos += 4
            elif op == 0x94:  # MEMOIZE
                if op not in rare:
                    rare[op] = op_pos
                memo[len(memo)] = stack[-1]
            elif op == 0x4E:  # NONE
                stack.append(None)
            elif op == 0x7D:  # EMPTY_DICT
                stack.append({})
            elif op == 0x5D:  # EMPTY_LIST
                stack.append([])
            elif op == 0x75:  # SETITEMS
                items = stack
                stack = metastack.pop()
                if len(items) % 2:
                    raise fail("SETITEMS with an odd number of items", op_pos)
                target = stack[-1]
                if type(target) is dict:
                    for i in range(0, len(items), 2):
                        target[hashable(items[i], op_pos)] = items[i + 1]
                elif isinstance(target, Call):
                    if target.dict_items is None:
                        target.dict_items = []
                    for i in range(0, len(items), 2):
                        checked(items[i], op_pos)
                    target.dict_items.extend(zip(items[::2], items[1::2]))
                elif _indexable(target):  # list[i] = v, bytearray[i] = v: a no-op here
                    anomalies.append(Anomaly("container-op", "SETITEMS on a "
                                             f"{type(target).__name__}", op_pos))
                elif items:  # (none: both unpicklers do nothing, whatever is there)
                    raise fail(f"SETITEMS on {type(target).__name__}", op_pos)
            elif op == 0x73:  # SETITEM
                value = stack.pop()
                key = stack.pop()
                target = stack[-1]
                if type(target) is dict:
                    target[hashable(key, op_pos)] = value
                elif isinstance(target, Call):
                    if target.dict_items is None:
                        target.dict_items = []
                    checked(key, op_pos)
                    target.dict_items.append((key, value))
                elif _indexable(target):
                    anomalies.append(Anomaly("container-op", "SETITEM on a "
                                             f"{type(target).__name__}", op_pos))
                else:
                    raise fail(f"SETITEM on {type(target).__name__}", op_pos)
            elif op == 0x65:  # APPENDS
                items = stack
                stack = metastack.pop()
                target = stack[-1]
                if type(target) is list:
                    target.extend(items)
                elif isinstance(target, Call):
                    if target.list_items is None:
                        target.list_items = []
                    target.list_items.extend(items)
                elif _extendable(target):  # bytearray.extend: a no-op here
                    anomalies.append(Anomaly("container-op", "APPENDS on a bytearray", op_pos))
                elif items or python:  # (none: C's unpickler does nothing, whatever is there)
                    raise fail(f"APPENDS on {type(target).__name__}", op_pos)
            elif op == 0x61:  # APPEND
                value = stack.pop()
                target = stack[-1]
                if type(target) is list:
                    target.append(value)
                elif isinstance(target, Call):
                    if target.list_items is None:
                        target.list_items = []
                    target.list_items.append(value)
                elif _extendable(target):
                    anomalies.append(Anomaly("container-op", "APPEND on a bytearray", op_pos))
                else:
                    raise fail(f"APPEND on {type(target).__name__}", op_pos)
            elif op == 0x63:  # GLOBAL
                module = line_at(pos, op_pos, limit)
                pos += len(module) + 1
                name = line_at(pos, op_pos, limit)
                pos += len(name) + 1
                stack.append(add_global(text(module, op_pos), text(name, op_pos), op, op_pos))
            elif op == 0x93:  # STACK_GLOBAL
                rare.setdefault(op, op_pos)
                name = stack.pop()
                module = stack[-1]
                stack[-1] = add_global(module, name, op, op_pos)
            elif op == 0x62:  # BUILD
                state = stack.pop()
                target = stack[-1]
                if isinstance(target, Call):
                    if target.state is None:
                        target.state = state
                    else:  # a second BUILD: keep both, in order
                        prev = target.state
                        target.state = Builds([*prev, state] if isinstance(prev, Builds)
                                              else [prev, state])
                    if after_build is not None:
                        swap = after_build(target, pos, frame_end)
                        if swap is not None:
                            pos, stack[-1] = swap
                            if frame_end >= 0:
                                frame_end = -1
                                limit = size
                elif isinstance(target, GlobalRef):
                    target.state = state
                    anomalies.append(Anomaly(
                        "build-on-global",
                        f"BUILD sets attributes on the imported object {target.full_name}", op_pos))
                else:
                    anomalies.append(Anomaly(
                        "build-on-builtin",
                        f"BUILD on a plain {type(target).__name__}, which a real unpickler rejects",
                        op_pos))
            elif op == 0x81:  # NEWOBJ
                args = stack.pop()
                cls = stack[-1]
                if type(args) is not tuple:
                    raise fail("NEWOBJ arguments are not a tuple", op_pos)
                stack[-1] = new_call(cls, args, "newobj", op_pos)
            elif op == 0x92:  # NEWOBJ_EX
                rare.setdefault(op, op_pos)
                kwargs = stack.pop()
                args = stack.pop()
                cls = stack[-1]
                if type(args) is not tuple or type(kwargs) is not dict:
                    raise fail("NEWOBJ_EX arguments are malformed", op_pos)
                stack[-1] = new_call(cls, args, "newobj_ex", op_pos, kwargs)
            elif op == 0x95:  # FRAME
                rare.setdefault(op, op_pos)
                n = unpack_q(data, pos)[0]
                pos += 8
                if frame_end >= 0:  # no pickler writes this: the loaders part ways here
                    anomalies.append(Anomaly(
                        "frame-mismatch", "a frame begins inside another: pickle.load from "
                        "a file (torch.load's BytesIO too) goes on at the outer frame's end "
                        "where the new frame runs past it, pickle.loads and this reader "
                        "straight on, Python's own unpickler refuses it; each loader may "
                        "run another stream", op_pos))
                if pos + n > size:
                    if not python:
                        raise fail(FRAME_TOO_LONG, op_pos)
                    n = size - pos  # Python's unpickler frames what there is, and reads on
                frame_end = pos + n
                limit = frame_end
            elif op == 0x80:  # PROTO
                proto = data[pos]
                pos += 1
                if proto > HIGHEST_PROTOCOL:
                    raise fail(f"unsupported pickle protocol {proto}", op_pos)
                result.protocol = max(result.protocol, proto)
            elif op == 0x2E:  # STOP
                value = stack.pop()
                if stack or metastack:
                    anomalies.append(Anomaly("stack-left",
                                             "objects were left on the stack at STOP", op_pos))
                if frame_end >= 0 and pos != frame_end:
                    anomalies.append(Anomaly("frame-mismatch",
                                             "the pickle stops inside a frame", op_pos))
                result.value = value
                result.end = pos
                return result
            elif op == 0x47:  # BINFLOAT
                stack.append(unpack_d(data, pos)[0])
                pos += 8
            elif op == 0x8A:  # LONG1
                n = data[pos]
                pos += 1
                if pos + n > size:
                    raise truncated(op_pos)
                stack.append(int.from_bytes(data[pos:pos + n], "little", signed=True))
                pos += n
            elif op == 0x55:  # SHORT_BINSTRING (Python 2 str)
                n = data[pos]
                pos += 1
                if pos + n > size:
                    raise truncated(op_pos)
                stack.append(_py2_str(data[pos:pos + n]))
                pos += n
            elif op == 0x8F:  # EMPTY_SET
                stack.append(set())
            # Every opcode below is one torch's weights-only unpickler refuses (and torch.save's
            # protocol 2 never writes): note where each first appears, then go on down.
            elif rare.setdefault(op, op_pos) < 0:  # never true: op_pos >= 0
                pass
            elif op == 0x8B:  # LONG4
                n = unpack_i(data, pos)[0]
                pos += 4
                if n < 0:
                    raise fail("LONG4 with a negative length", op_pos)
                if n > MAX_LONG_BYTES:
                    raise bound("LONG4 integer is unreasonably large", op_pos)
                if pos + n > size:
                    raise truncated(op_pos)
                stack.append(int.from_bytes(data[pos:pos + n], "little", signed=True))
                pos += n
            elif op == 0x43:  # SHORT_BINBYTES
                n = data[pos]
                pos += 1
                stack.append(bytes_value(pos, n, "bytes", op_pos))
                pos += n
            elif op == 0x42:  # BINBYTES
                n = unpack_iu(data, pos)[0]
                pos += 4
                stack.append(bytes_value(pos, n, "bytes", op_pos))
                pos += n
            elif op == 0x8E:  # BINBYTES8
                n = unpack_q(data, pos)[0]
                pos += 8
                stack.append(bytes_value(pos, n, "bytes", op_pos))
                pos += n
            elif op == 0x96:  # BYTEARRAY8
                n = unpack_q(data, pos)[0]
                pos += 8
                stack.append(bytes_value(pos, n, "bytearray", op_pos))
                pos += n
            elif op == 0x8D:  # BINUNICODE8
                n = unpack_q(data, pos)[0]
                pos += 8
                if pos + n > size:
                    raise truncated(op_pos)
                stack.append(text(data[pos:pos + n], op_pos))
                pos += n
            elif op == 0x54:  # BINSTRING
                n = unpack_i(data, pos)[0]
                pos += 4
                if n < 0:
                    raise fail("BINSTRING with a negative length", op_pos)
                if pos + n > size:
                    raise truncated(op_pos)
                stack.append(_py2_str(data[pos:pos + n]) if n < lazy_threshold
                             else LazyBytes(data, pos, n, "bytes"))
                pos += n
            elif op == 0x90:  # ADDITEMS
                items = stack
                stack = metastack.pop()
                target = stack[-1]
                if type(target) is set:
                    for item in items:
                        target.add(hashable(item, op_pos))
                elif isinstance(target, Call):
                    if target.list_items is None:
                        target.list_items = []
                    target.list_items.extend(items)
                elif items or python:  # (none: C's unpickler does nothing, whatever is there)
                    raise fail(f"ADDITEMS on {type(target).__name__}", op_pos)
            elif op == 0x91:  # FROZENSET
                items = stack
                stack = metastack.pop()
                stack.append(frozenset(hashable(i, op_pos) for i in items))
            elif op == 0x6C:  # LIST
                items = stack
                stack = metastack.pop()
                stack.append(items)
            elif op == 0x64:  # DICT
                items = stack
                stack = metastack.pop()
                if len(items) % 2:
                    raise fail("DICT with an odd number of items", op_pos)
                stack.append({hashable(items[i], op_pos): items[i + 1]
                              for i in range(0, len(items), 2)})
            elif op == 0x30:  # POP
                if stack:
                    stack.pop()
                else:
                    stack = metastack.pop()
            elif op == 0x31:  # POP_MARK
                stack = metastack.pop()
            elif op == 0x32:  # DUP
                stack.append(stack[-1])
            elif op == 0x67:  # GET
                line = line_at(pos, op_pos, limit)
                pos += len(line) + 1
                stack.append(memo[_text_int(line if python else _c_str(line), op_pos)])
            elif op == 0x70:  # PUT
                line = line_at(pos, op_pos, limit)
                pos += len(line) + 1
                idx = _text_int(line if python else _c_str(line), op_pos)
                if idx < 0:
                    raise fail("negative PUT index", op_pos)
                memo[idx] = stack[-1]
            elif op == 0x49:  # INT
                line = line_at(pos, op_pos, limit)
                pos += len(line) + 1
                stack.append(_int_opcode(line, op_pos, python))
            elif op == 0x4C:  # LONG: int(text, 0) in both unpicklers
                line = line_at(pos, op_pos, limit)
                pos += len(line) + 1
                if not python:
                    line = _c_str(line)  # C parses the line as a C string: up to a NUL
                if line.endswith(b"L"):
                    line = line[:-1]
                stack.append(_text_int(line, op_pos, 0))
            elif op == 0x46:  # FLOAT
                line = line_at(pos, op_pos, limit)
                pos += len(line) + 1
                try:
                    stack.append(float(line if python else _c_str(line)))
                except ValueError:
                    raise fail("malformed FLOAT", op_pos) from None
            elif op == 0x53:  # STRING
                line = line_at(pos, op_pos, limit)
                pos += len(line) + 1
                if len(line) >= 2 and line[0] == line[-1] and line[:1] in (b"'", b'"'):
                    try:
                        raw = codecs.escape_decode(line[1:-1])[0]
                    except ValueError:
                        raise fail("malformed STRING", op_pos) from None
                    stack.append(_py2_str(raw))
                else:
                    raise fail("STRING argument is not quoted", op_pos)
            elif op == 0x56:  # UNICODE
                line = line_at(pos, op_pos, limit)
                pos += len(line) + 1
                try:
                    stack.append(line.decode("raw-unicode-escape"))
                except UnicodeDecodeError:
                    raise fail("malformed UNICODE", op_pos) from None
            elif op == 0x50:  # PERSID
                line = line_at(pos, op_pos, limit)
                pos += len(line) + 1
                stack.append(persistent(text(line, op_pos, "ascii"), op_pos))
            elif op == 0x69:  # INST
                module = line_at(pos, op_pos, limit)
                pos += len(module) + 1
                name = line_at(pos, op_pos, limit)
                pos += len(name) + 1
                cls = add_global(text(module, op_pos), text(name, op_pos), op, op_pos)
                items = stack
                stack = metastack.pop()
                stack.append(new_call(cls, deep(tuple(items), op_pos), "inst", op_pos))
            elif op == 0x6F:  # OBJ
                items = stack
                stack = metastack.pop()
                if not items:
                    raise fail("OBJ without a class", op_pos)
                stack.append(new_call(items[0], deep(tuple(items[1:]), op_pos), "obj", op_pos))
            elif op in (0x82, 0x83, 0x84):  # EXT1, EXT2, EXT4
                n = {0x82: 1, 0x83: 2, 0x84: 4}[op]
                if pos + n > size:
                    raise truncated(op_pos)
                code = int.from_bytes(data[pos:pos + n], "little")
                pos += n
                anomalies.append(Anomaly(
                    "extension-import",
                    f"imports through copyreg extension code {code}, a name not in the file",
                    op_pos))
                stack.append(ExtensionRef(code, op_pos))
            elif op == 0x98:  # READONLY_BUFFER: a read-only view of the bytes on top
                rare.setdefault(op, op_pos)
                if not isinstance(stack[-1], (bytes, bytearray, LazyBytes)):
                    raise fail("READONLY_BUFFER on an object without a buffer", op_pos)
            elif op == 0x97:  # NEXT_BUFFER
                raise fail("out-of-band buffers are not part of a file", op_pos)
            else:
                raise fail(f"unknown opcode 0x{op:02x}", op_pos)
    except (IndexError, struct.error):
        if pos >= size:
            raise fail("truncated pickle: data ends inside an opcode", op_pos) from None
        raise fail("stack underflow: an opcode found too few items", op_pos) from None
    except KeyError as err:
        raise fail(f"memo key {err.args[0]} read before it was written", op_pos) from None
    except TypeError as err:
        raise fail(f"malformed stream: {err}", op_pos) from None




def _py2_str(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _text_int(line: bytes, at: int, base: int = 10) -> int:
    try:
        return int(line, base)
    except ValueError:
        raise _Stop(PickleError("malformed integer", at)) from None


_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1


def _int_opcode(line: bytes, at: int, python: bool) -> int:
    """INT's text as each unpickler reads it: Python's ``int(text, 0)`` ("00" and "01" are
    bools); C's ``strtol(text, 0)`` (a leading 0 is octal, "010" is 8; any two characters
    reading 0 or 1 are a bool) or, where that does not take the whole line or overflows,
    ``int(text, 0)``."""
    if python:
        if line in (b"00", b"01"):
            return line == b"01"
    else:  # C reads the line as a C string: up to its first NUL
        value = _strtol(_c_str(line))
        if value is not None:  # a two-character 0 or 1 is a bool ("00", "01", "-0", "+1")
            return bool(value) if len(line) == 2 and value in (0, 1) else value
        line = _c_str(line)
    return _text_int(line, at, 0)


def _extendable(target: Any) -> bool:
    """A bytearray (the unpicklers extend whatever has ``extend``)."""
    return type(target) is bytearray or (type(target) is LazyBytes and
                                         target.kind == "bytearray")


def _indexable(target: Any) -> bool:
    """A list or a bytearray (the unpicklers set items on whatever takes them)."""
    return type(target) is list or _extendable(target)


def _c_str(line: bytes) -> bytes:
    """The line as C code reads it (a C string: up to its first NUL)."""
    nul = line.find(b"\0")
    return line if nul < 0 else line[:nul]


def _strtol(line: bytes) -> int | None:
    """C's strtol(line, &end, 0) when it consumes the whole line within a C long."""
    text = line.lstrip(b" \t\n\v\f\r")
    sign = -1 if text[:1] == b"-" else 1
    if text[:1] in (b"+", b"-"):
        text = text[1:]
    if text[:2] in (b"0x", b"0X") and len(text) > 2:
        digits, base, ok = text[2:], 16, b"0123456789abcdefABCDEF"
    elif text[:1] == b"0":
        digits, base, ok = text, 8, b"01234567"
    else:
        digits, base, ok = text, 10, b"0123456789"
    if not digits or any(c not in ok for c in digits):
        return None
    value = sign * int(digits, base)
    return value if _LONG_MIN <= value <= _LONG_MAX else None
