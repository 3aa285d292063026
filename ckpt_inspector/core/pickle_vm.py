"""A pickle interpreter that never runs the file's code.

It is driven by the opcodes alone. Where ``pickle.Unpickler`` would import a
module (``GLOBAL``, ``STACK_GLOBAL``, ``INST``), this interpreter records a
:class:`GlobalRef`; where it would call something (``REDUCE``, ``NEWOBJ``,
``OBJ``, ``INST``), it records a :class:`Call`; ``BUILD`` stores the state on
the call; persistent ids become whatever the caller's ``persistent_load``
returns (by default a :class:`PersistentRef`). Nothing is imported and nothing
is called, so the result is inert: plain Python containers and scalars plus
these records.

Hostile streams end in a :class:`PickleError` with the byte offset, never in
a crash: the interpreter does not recurse, every length is checked against
the data before it is read, and tuples (the only containers whose hashing
recurses in C) may not nest deeper than :data:`MAX_TUPLE_DEPTH`.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core.errors import PickleError

MAX_TUPLE_DEPTH = 1000
MAX_LONG_BYTES = 1 << 20
HIGHEST_PROTOCOL = 5
# bytes payloads at least this long are not copied out of the stream
LAZY_BYTES_THRESHOLD = 1 << 16


class GlobalRef:
    """A reference to ``module.name`` that a real unpickler would import.

    ``literal`` is False when the module or name was not a string written in
    the stream (for example the result of a call fed to ``STACK_GLOBAL``);
    ``module``/``name`` then hold whatever objects were on the stack.
    """

    __slots__ = ("literal", "member", "module", "name", "offset", "opcode", "original", "state")

    def __init__(self, module: Any, name: Any, offset: int, opcode: str, literal: bool = True,
                 original: tuple[str, str] | None = None):
        self.module = module
        self.name = name
        self.offset = offset
        self.opcode = opcode
        self.literal = literal
        self.original = original  # (module, name) before Python 2 name mapping
        self.state: Any = None  # set by BUILD on a global (a hostile trick)
        self.member: str | None = None  # the archive member it was read from, set by readers

    @property
    def full_name(self) -> str:
        if self.literal:
            return f"{self.module}.{self.name}"
        return "<computed>." + (self.name if isinstance(self.name, str) else "<computed>")

    def __repr__(self) -> str:
        return f"GlobalRef({self.full_name})"


class Call:
    """``func(*args, **kwargs)`` as the stream asks for it, never performed.

    ``kind`` is the opcode family: ``reduce``, ``newobj``, ``newobj_ex``,
    ``obj`` or ``inst``. ``state`` holds what ``BUILD`` would pass to
    ``__setstate__``; ``list_items``/``dict_items`` what ``APPEND(S)`` and
    ``SETITEM(S)`` would add to the object.
    """

    __slots__ = ("args", "dict_items", "func", "kind", "kwargs", "list_items", "offset", "state")

    def __init__(self, func: Any, args: Any, kind: str, offset: int, kwargs: Any = None):
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.kind = kind
        self.offset = offset
        self.state: Any = None
        self.list_items: list[Any] | None = None
        self.dict_items: list[tuple[Any, Any]] | None = None

    @property
    def func_name(self) -> str | None:
        return self.func.full_name if isinstance(self.func, GlobalRef) else None

    def __repr__(self) -> str:
        return f"Call({self.func_name or '<computed>'}, kind={self.kind})"


class PersistentRef:
    """A persistent id left unresolved (no ``persistent_load`` was given)."""

    __slots__ = ("offset", "pid")

    def __init__(self, pid: Any, offset: int):
        self.pid = pid
        self.offset = offset

    def __repr__(self) -> str:
        return f"PersistentRef({self.pid!r})"


class LazyBytes:
    """A large ``bytes``/``bytearray`` payload, left in the stream until asked for."""

    __slots__ = ("data", "kind", "length", "offset")

    def __init__(self, data: Any, offset: int, length: int, kind: str):
        self.data = data
        self.offset = offset
        self.length = length
        self.kind = kind  # "bytes" | "bytearray"

    def tobytes(self) -> bytes:
        return bytes(self.data[self.offset:self.offset + self.length])

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"<{self.kind} of {self.length} bytes>"


class ExtensionRef:
    """An object named by a ``copyreg`` extension code (EXT1/2/4)."""

    __slots__ = ("code", "offset")

    def __init__(self, code: int, offset: int):
        self.code = code
        self.offset = offset

    def __repr__(self) -> str:
        return f"ExtensionRef({self.code})"


@dataclass
class Anomaly:
    """Something a well-formed pickle from torch or pickle.dump never contains."""

    code: str  # dynamic-import | build-on-global | extension-import | frame-mismatch | stack-left
    message: str
    offset: int


@dataclass
class PickleResult:
    value: Any
    start: int  # offset of the first opcode
    end: int  # offset just past STOP
    protocol: int
    globals: list[GlobalRef] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)


PersistentLoad = Callable[[Any, int], Any]

_UNPACK_I = struct.Struct("<i").unpack_from
_UNPACK_H = struct.Struct("<H").unpack_from
_UNPACK_IU = struct.Struct("<I").unpack_from
_UNPACK_Q = struct.Struct("<Q").unpack_from
_UNPACK_D = struct.Struct(">d").unpack_from

_MARK = object()


def _name(opcode: int) -> str:
    return {0x63: "GLOBAL", 0x93: "STACK_GLOBAL", 0x69: "INST"}.get(opcode, hex(opcode))


def load(
    data: bytes | Any,
    start: int = 0,
    *,
    persistent_load: PersistentLoad | None = None,
    lazy_bytes_threshold: int = LAZY_BYTES_THRESHOLD,
) -> PickleResult:
    """Interpret one pickle in ``data`` (``bytes`` or ``mmap``) starting at ``start``.

    Reads up to and including the first ``STOP`` and returns the inert value
    with every global, call and anomaly seen. Raises :class:`PickleError` on a
    malformed, truncated or hostile stream.
    """
    partial = PickleResult(None, start, start, 0)
    try:
        return _run(data, start, persistent_load, lazy_bytes_threshold, partial)
    except PickleError as err:
        err.result = partial
        raise
    except RecursionError:  # pragma: no cover - defensive; the VM does not recurse
        err = PickleError("structure nested too deeply")
    except MemoryError:
        err = PickleError("stream needs more memory than is available")
    err.result = partial
    raise err


def _run(data: Any, start: int, persistent_load: PersistentLoad | None,
         lazy_threshold: int, result: PickleResult) -> PickleResult:
    size = len(data)
    pos = start
    stack: list[Any] = []
    metastack: list[list[Any]] = []
    memo: dict[int, Any] = {}
    tuple_depth: dict[int, int] = {}
    globals_ = result.globals
    calls = result.calls
    anomalies = result.anomalies
    proto = 0
    frame_end = -1
    op_pos = pos

    def fail(msg: str) -> PickleError:
        return PickleError(msg, op_pos)

    def need(n: int) -> None:
        if n < 0 or pos + n > size:
            raise fail("truncated pickle: data ends inside an opcode")
        if frame_end >= 0 and pos + n > frame_end:
            anomalies.append(Anomaly("frame-mismatch",
                                     "an opcode runs past the end of its frame", op_pos))

    def readline() -> bytes:
        end = data.find(b"\n", pos)
        if end < 0:
            raise fail("truncated pickle: missing end of line")
        return data[pos:end]

    def pop() -> Any:
        if not stack:
            raise fail("stack underflow")
        return stack.pop()

    def pop_mark() -> list[Any]:
        nonlocal stack
        if not metastack:
            raise fail("MARK expected but not found")
        items = stack
        stack = metastack.pop()
        return items

    def top() -> Any:
        if not stack:
            raise fail("stack underflow")
        return stack[-1]

    def make_tuple(items: list[Any] | tuple[Any, ...]) -> tuple[Any, ...]:
        t = tuple(items)
        depth = 1
        for item in t:
            if type(item) is tuple:
                d = tuple_depth.get(id(item), 1) + 1
                if d > depth:
                    depth = d
        if depth > MAX_TUPLE_DEPTH:
            raise fail(f"tuples nested deeper than {MAX_TUPLE_DEPTH}")
        if depth > 1:
            tuple_depth[id(t)] = depth
        return t

    def hashable(key: Any) -> Any:
        try:
            hash(key)
        except TypeError:
            raise fail(f"unhashable {type(key).__name__} as a dict key or set member") from None
        return key

    def add_global(module: Any, name: Any, opcode: int) -> GlobalRef:
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
        ref = GlobalRef(module, name, op_pos, _name(opcode), literal, original)
        globals_.append(ref)
        if not literal:
            anomalies.append(Anomaly(
                "dynamic-import",
                f"{_name(opcode)} imports a name that is not a literal string in the stream",
                op_pos))
        return ref

    def bytes_value(n: int, kind: str) -> Any:
        nonlocal pos
        need(n)
        if n >= lazy_threshold:
            value: Any = LazyBytes(data, pos, n, kind)
        else:
            value = bytes(data[pos:pos + n])
            if kind == "bytearray":
                value = bytearray(value)
        pos += n
        return value

    def text(raw: bytes, encoding: str = "utf-8") -> str:
        try:
            return raw.decode(encoding, "surrogatepass")
        except UnicodeDecodeError:
            raise fail("invalid UTF-8 in a string") from None

    def persistent(pid: Any) -> Any:
        if persistent_load is None:
            return PersistentRef(pid, op_pos)
        return persistent_load(pid, op_pos)

    def call(func: Any, args: Any, kind: str, kwargs: Any = None) -> Call:
        c = Call(func, args, kind, op_pos, kwargs)
        calls.append(c)
        return c

    while True:
        if frame_end >= 0 and pos >= frame_end:
            if pos > frame_end:
                anomalies.append(Anomaly("frame-mismatch",
                                         "an opcode straddles the end of a frame", op_pos))
            frame_end = -1
        op_pos = pos
        if pos >= size:
            raise fail("truncated pickle: no STOP opcode")
        op = data[pos]
        pos += 1

        if op == 0x71:  # BINPUT
            need(1)
            if not stack:
                raise fail("PUT with an empty stack")
            memo[data[pos]] = stack[-1]
            pos += 1
        elif op == 0x68:  # BINGET
            need(1)
            idx = data[pos]
            pos += 1
            try:
                stack.append(memo[idx])
            except KeyError:
                raise fail(f"memo key {idx} read before it was written") from None
        elif op == 0x28:  # MARK
            metastack.append(stack)
            stack = []
        elif op == 0x58:  # BINUNICODE
            need(4)
            n = _UNPACK_IU(data, pos)[0]
            pos += 4
            need(n)
            stack.append(text(data[pos:pos + n]))
            pos += n
        elif op == 0x8C:  # SHORT_BINUNICODE
            need(1)
            n = data[pos]
            pos += 1
            need(n)
            stack.append(text(data[pos:pos + n]))
            pos += n
        elif op == 0x4B:  # BININT1
            need(1)
            stack.append(data[pos])
            pos += 1
        elif op == 0x4D:  # BININT2
            need(2)
            stack.append(_UNPACK_H(data, pos)[0])
            pos += 2
        elif op == 0x4A:  # BININT
            need(4)
            stack.append(_UNPACK_I(data, pos)[0])
            pos += 4
        elif op == 0x74:  # TUPLE
            items = pop_mark()  # rebinds ``stack``: pop before appending
            stack.append(make_tuple(items))
        elif op == 0x29:  # EMPTY_TUPLE
            stack.append(())
        elif op == 0x85:  # TUPLE1
            stack.append(make_tuple((pop(),)))
        elif op == 0x86:  # TUPLE2
            b = pop()
            a = pop()
            stack.append(make_tuple((a, b)))
        elif op == 0x87:  # TUPLE3
            c3 = pop()
            b = pop()
            a = pop()
            stack.append(make_tuple((a, b, c3)))
        elif op == 0x52:  # REDUCE
            args = pop()
            func = pop()
            if not isinstance(args, tuple):
                raise fail("REDUCE arguments are not a tuple")
            stack.append(call(func, args, "reduce"))
        elif op == 0x51:  # BINPERSID
            stack.append(persistent(pop()))
        elif op == 0x63:  # GLOBAL
            module = readline()
            pos += len(module) + 1
            name = readline()
            pos += len(name) + 1
            stack.append(add_global(text(module), text(name), op))
        elif op == 0x93:  # STACK_GLOBAL
            name = pop()
            module = pop()
            stack.append(add_global(module, name, op))
        elif op == 0x89:  # NEWFALSE
            stack.append(False)
        elif op == 0x88:  # NEWTRUE
            stack.append(True)
        elif op == 0x4E:  # NONE
            stack.append(None)
        elif op == 0x7D:  # EMPTY_DICT
            stack.append({})
        elif op == 0x5D:  # EMPTY_LIST
            stack.append([])
        elif op == 0x94:  # MEMOIZE
            if not stack:
                raise fail("MEMOIZE with an empty stack")
            memo[len(memo)] = stack[-1]
        elif op == 0x95:  # FRAME
            need(8)
            n = _UNPACK_Q(data, pos)[0]
            pos += 8
            if pos + n > size:
                raise fail("frame length is larger than the data")
            frame_end = pos + n
        elif op == 0x75:  # SETITEMS
            items = pop_mark()
            if len(items) % 2:
                raise fail("SETITEMS with an odd number of items")
            target = top()
            if type(target) is dict:
                for i in range(0, len(items), 2):
                    target[hashable(items[i])] = items[i + 1]
            elif isinstance(target, Call):
                if target.dict_items is None:
                    target.dict_items = []
                target.dict_items.extend(zip(items[::2], items[1::2]))
            else:
                raise fail(f"SETITEMS on {type(target).__name__}")
        elif op == 0x73:  # SETITEM
            value = pop()
            key = pop()
            target = top()
            if type(target) is dict:
                target[hashable(key)] = value
            elif isinstance(target, Call):
                if target.dict_items is None:
                    target.dict_items = []
                target.dict_items.append((key, value))
            else:
                raise fail(f"SETITEM on {type(target).__name__}")
        elif op == 0x65:  # APPENDS
            items = pop_mark()
            target = top()
            if type(target) is list:
                target.extend(items)
            elif isinstance(target, Call):
                if target.list_items is None:
                    target.list_items = []
                target.list_items.extend(items)
            else:
                raise fail(f"APPENDS on {type(target).__name__}")
        elif op == 0x61:  # APPEND
            value = pop()
            target = top()
            if type(target) is list:
                target.append(value)
            elif isinstance(target, Call):
                if target.list_items is None:
                    target.list_items = []
                target.list_items.append(value)
            else:
                raise fail(f"APPEND on {type(target).__name__}")
        elif op == 0x62:  # BUILD
            state = pop()
            target = top()
            if isinstance(target, Call):
                if target.state is None:
                    target.state = state
                else:  # a second BUILD: keep both, in order
                    prev = target.state
                    target.state = Builds([*prev, state] if isinstance(prev, Builds)
                                          else [prev, state])
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
            args = pop()
            cls = pop()
            if not isinstance(args, tuple):
                raise fail("NEWOBJ arguments are not a tuple")
            stack.append(call(cls, args, "newobj"))
        elif op == 0x92:  # NEWOBJ_EX
            kwargs = pop()
            args = pop()
            cls = pop()
            if not isinstance(args, tuple) or not isinstance(kwargs, dict):
                raise fail("NEWOBJ_EX arguments are malformed")
            stack.append(call(cls, args, "newobj_ex", kwargs))
        elif op == 0x80:  # PROTO
            need(1)
            proto = data[pos]
            pos += 1
            if proto > HIGHEST_PROTOCOL:
                raise fail(f"unsupported pickle protocol {proto}")
            result.protocol = max(result.protocol, proto)
        elif op == 0x2E:  # STOP
            value = pop()
            if stack or metastack:
                anomalies.append(Anomaly("stack-left",
                                         "objects were left on the stack at STOP", op_pos))
            result.value = value
            result.end = pos
            return result
        elif op == 0x47:  # BINFLOAT
            need(8)
            stack.append(_UNPACK_D(data, pos)[0])
            pos += 8
        elif op == 0x8A:  # LONG1
            need(1)
            n = data[pos]
            pos += 1
            need(n)
            stack.append(int.from_bytes(data[pos:pos + n], "little", signed=True))
            pos += n
        elif op == 0x8B:  # LONG4
            need(4)
            n = _UNPACK_I(data, pos)[0]
            pos += 4
            if n < 0:
                raise fail("LONG4 with a negative length")
            if n > MAX_LONG_BYTES:
                raise fail("LONG4 integer is unreasonably large")
            need(n)
            stack.append(int.from_bytes(data[pos:pos + n], "little", signed=True))
            pos += n
        elif op == 0x43:  # SHORT_BINBYTES
            need(1)
            n = data[pos]
            pos += 1
            stack.append(bytes_value(n, "bytes"))
        elif op == 0x42:  # BINBYTES
            need(4)
            n = _UNPACK_IU(data, pos)[0]
            pos += 4
            stack.append(bytes_value(n, "bytes"))
        elif op == 0x8E:  # BINBYTES8
            need(8)
            n = _UNPACK_Q(data, pos)[0]
            pos += 8
            stack.append(bytes_value(n, "bytes"))
        elif op == 0x96:  # BYTEARRAY8
            need(8)
            n = _UNPACK_Q(data, pos)[0]
            pos += 8
            stack.append(bytes_value(n, "bytearray"))
        elif op == 0x8D:  # BINUNICODE8
            need(8)
            n = _UNPACK_Q(data, pos)[0]
            pos += 8
            need(n)
            stack.append(text(data[pos:pos + n]))
            pos += n
        elif op == 0x55:  # SHORT_BINSTRING (Python 2 str)
            need(1)
            n = data[pos]
            pos += 1
            need(n)
            stack.append(_py2_str(data[pos:pos + n]))
            pos += n
        elif op == 0x54:  # BINSTRING
            need(4)
            n = _UNPACK_I(data, pos)[0]
            pos += 4
            if n < 0:
                raise fail("BINSTRING with a negative length")
            need(n)
            stack.append(_py2_str(data[pos:pos + n]) if n < lazy_threshold
                         else LazyBytes(data, pos, n, "bytes"))
            pos += n
        elif op == 0x8F:  # EMPTY_SET
            stack.append(set())
        elif op == 0x90:  # ADDITEMS
            items = pop_mark()
            target = top()
            if type(target) is set:
                for item in items:
                    target.add(hashable(item))
            elif isinstance(target, Call):
                if target.list_items is None:
                    target.list_items = []
                target.list_items.extend(items)
            else:
                raise fail(f"ADDITEMS on {type(target).__name__}")
        elif op == 0x91:  # FROZENSET
            items = pop_mark()
            stack.append(frozenset(hashable(i) for i in items))
        elif op == 0x6C:  # LIST
            items = pop_mark()
            stack.append(items)
        elif op == 0x64:  # DICT
            items = pop_mark()
            if len(items) % 2:
                raise fail("DICT with an odd number of items")
            stack.append({hashable(items[i]): items[i + 1] for i in range(0, len(items), 2)})
        elif op == 0x30:  # POP
            if stack:
                stack.pop()
            else:
                pop_mark()
        elif op == 0x31:  # POP_MARK
            pop_mark()
        elif op == 0x32:  # DUP
            stack.append(top())
        elif op == 0x6A:  # LONG_BINGET
            need(4)
            idx = _UNPACK_IU(data, pos)[0]
            pos += 4
            try:
                stack.append(memo[idx])
            except KeyError:
                raise fail(f"memo key {idx} read before it was written") from None
        elif op == 0x72:  # LONG_BINPUT
            need(4)
            if not stack:
                raise fail("PUT with an empty stack")
            memo[_UNPACK_IU(data, pos)[0]] = stack[-1]
            pos += 4
        elif op == 0x67:  # GET
            line = readline()
            pos += len(line) + 1
            idx = _text_int(line, fail)
            try:
                stack.append(memo[idx])
            except KeyError:
                raise fail(f"memo key {idx} read before it was written") from None
        elif op == 0x70:  # PUT
            line = readline()
            pos += len(line) + 1
            idx = _text_int(line, fail)
            if idx < 0:
                raise fail("negative PUT index")
            if not stack:
                raise fail("PUT with an empty stack")
            memo[idx] = stack[-1]
        elif op == 0x49:  # INT
            line = readline()
            pos += len(line) + 1
            if line == b"00":
                stack.append(False)
            elif line == b"01":
                stack.append(True)
            else:
                stack.append(_text_int(line, fail))
        elif op == 0x4C:  # LONG
            line = readline()
            pos += len(line) + 1
            if line.endswith(b"L"):
                line = line[:-1]
            stack.append(_text_int(line, fail))
        elif op == 0x46:  # FLOAT
            line = readline()
            pos += len(line) + 1
            try:
                stack.append(float(line))
            except ValueError:
                raise fail("malformed FLOAT") from None
        elif op == 0x53:  # STRING
            line = readline()
            pos += len(line) + 1
            if len(line) >= 2 and line[0] == line[-1] and line[:1] in (b"'", b'"'):
                try:
                    raw = codecs.escape_decode(line[1:-1])[0]
                except ValueError:
                    raise fail("malformed STRING") from None
                stack.append(_py2_str(raw))
            else:
                raise fail("STRING argument is not quoted")
        elif op == 0x56:  # UNICODE
            line = readline()
            pos += len(line) + 1
            try:
                stack.append(line.decode("raw-unicode-escape"))
            except UnicodeDecodeError:
                raise fail("malformed UNICODE") from None
        elif op == 0x50:  # PERSID
            line = readline()
            pos += len(line) + 1
            stack.append(persistent(text(line, "ascii")))
        elif op == 0x69:  # INST
            module = readline()
            pos += len(module) + 1
            name = readline()
            pos += len(name) + 1
            cls = add_global(text(module), text(name), op)
            items = pop_mark()
            stack.append(call(cls, make_tuple(items), "inst"))
        elif op == 0x6F:  # OBJ
            items = pop_mark()
            if not items:
                raise fail("OBJ without a class")
            stack.append(call(items[0], make_tuple(items[1:]), "obj"))
        elif op in (0x82, 0x83, 0x84):  # EXT1, EXT2, EXT4
            n = {0x82: 1, 0x83: 2, 0x84: 4}[op]
            need(n)
            code = int.from_bytes(data[pos:pos + n], "little")
            pos += n
            anomalies.append(Anomaly(
                "extension-import",
                f"imports through copyreg extension code {code}, a name not written in the file",
                op_pos))
            stack.append(ExtensionRef(code, op_pos))
        elif op in (0x97, 0x98):  # NEXT_BUFFER, READONLY_BUFFER
            raise fail("out-of-band buffers are not part of a file")
        else:
            raise fail(f"unknown opcode 0x{op:02x}")


class Builds(list):
    """Several BUILD states applied to one object, in order."""


def _py2_str(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _text_int(line: bytes, fail: Callable[[str], PickleError]) -> int:
    try:
        return int(line)
    except ValueError:
        raise fail("malformed integer") from None
