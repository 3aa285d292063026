"""The inert records the pickle interpreter leaves where an unpickler would act.

A :class:`GlobalRef` stands for an import, a :class:`Call` for a call (with the
state ``BUILD`` would set and the items ``APPEND``/``SETITEM`` would add),
:class:`PersistentRef`, :class:`ExtensionRef` and :class:`LazyBytes` for what a
persistent id, an extension code and a large bytes payload would become. None of
them runs anything: they are data, read by the rebuild and the verdict.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_P = (1 << 61) - 1  # CPython reduces numeric hashes modulo this prime

class GlobalRef:
    """A reference to ``module.name`` that a real unpickler would import.

    ``literal`` is False when the module or name was not a string written in
    the stream (for example the result of a call fed to ``STACK_GLOBAL``);
    ``module``/``name`` then hold whatever objects were on the stack.
    """

    __slots__ = ("_full", "literal", "member", "module", "name", "offset", "opcode", "original",
                 "state")

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
        self._full: str | None = None

    @property
    def full_name(self) -> str:
        """``module.name`` (made once: the verdict and the tree ask for it at every call of
        the name, 100,000s of times in a state_dict)."""
        full = self._full
        if full is None:
            full = self._full = f"{self.module}.{self.name}" if self.literal else \
                "<computed>." + (self.name if isinstance(self.name, str) else "<computed>")
        return full

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


class SafeKey:
    """A numeric dict key (or a tuple of them) hashed with the randomized bytes hash.

    CPython hashes numbers by value modulo 2**61-1, so a file can hold thousands of
    distinct keys with one hash and make every insert scan them all (quadratic time).
    """

    __slots__ = ("_hash", "value")

    def __init__(self, value: Any):
        self.value = value
        if type(value) is tuple:
            self._hash = hash(tuple(_scalar_hash(v) for v in value))
        else:
            self._hash = _scalar_hash(value)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SafeKey) and type(other.value) is type(self.value) \
            and other.value == self.value

    def __repr__(self) -> str:
        return f"SafeKey({self.value!r})"


def _scalar_hash(v: Any) -> int:
    """A randomized hash of a scalar that no chosen value can aim (ints by their bytes:
    ``repr`` of a huge int fails past Python's digit limit)."""
    t = type(v)
    if t is int or t is bool:
        return hash(int(v).to_bytes((v.bit_length() + 8) // 8, "little", signed=True))
    if t is float:
        return hash(struct.pack("<d", v))
    if t is complex:
        return hash(struct.pack("<dd", v.real, v.imag))
    return hash(v)  # str and None: randomized or constant already


def _risky_number(v: Any) -> bool:
    t = type(v)
    return (t is int and not -_P < v < _P) or t is float or t is complex


def safe_key(key: Any) -> Any:
    """``key``, or a :class:`SafeKey` for numbers whose hash an attacker can choose."""
    if _risky_number(key):
        return SafeKey(key)
    if type(key) is tuple and any(_risky_number(v) for v in key):
        return SafeKey(key) if all(type(v) in (int, float, complex, str, bool, type(None))
                                   for v in key) else key
    return key


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
    # opcode -> offset of its first use, for each opcode torch's weights-only unpickler
    # does not read (protocols 3-5's, the text opcodes of 0-1, POP, DUP, INST, ...)
    rare_opcodes: dict[int, int] = field(default_factory=dict)


PersistentLoad = Callable[[Any, int], Any]


class Builds(list):
    """Several BUILD states applied to one object, in order."""


def short_repr(value: Any, limit: int = 120, depth: int = 0) -> str:
    """A bounded, non-recursive-in-size description of an inert value."""
    if depth > 3:
        return "…"
    if isinstance(value, str):
        text = repr(value if len(value) <= limit else value[:limit] + "…")
    elif isinstance(value, (bytes, bytearray)):
        text = repr(bytes(value[:limit]))
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 12_000:
        text = f"<int of {value.bit_length():,} bits>"
    elif value is None or isinstance(value, (LazyBytes, int, float, bool, complex)):
        text = repr(value)
    elif isinstance(value, GlobalRef):
        text = value.full_name
    elif isinstance(value, Call):
        args = ", ".join(short_repr(a, limit // 2, depth + 1) for a in value.args[:4])
        text = f"{value.func_name or '<computed>'}({args})"
    elif isinstance(value, (tuple, list)):
        inner = ", ".join(short_repr(v, limit // 2, depth + 1) for v in value[:6])
        text = f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{short_repr(k, 30, depth + 1)}: {short_repr(v, 40, depth + 1)}"
                               for k, v in list(value.items())[:4]) + "}"
    else:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "…"
