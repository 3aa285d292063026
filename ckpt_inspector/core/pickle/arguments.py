"""Reading what a pickled call was given: bytes written in the stream, shapes, dtypes,
devices, the ``__dict__`` in a BUILD state, dict semantics for repeated keys.

Every function here takes the inert values of :mod:`values` and returns plain
Python values (or None / ValueError when the value is not what it should be).
"""

from __future__ import annotations

from typing import Any

from ckpt_inspector.core.pickle.values import Builds, Call, GlobalRef, LazyBytes, safe_key

MAX_NDIM = 1024
_INT64 = 1 << 63


def type_name_of(value: Any) -> str:
    if isinstance(value, GlobalRef):
        return value.full_name
    if isinstance(value, Call):
        return value.func_name or "<computed>"
    return type(value).__name__


# the names codecs.lookup accepts for the encodings a stream may spell bytes with
_CODEC_ALIASES = {
    "latin-1": {"latin1", "latin_1", "latin", "l1", "iso8859", "iso8859_1", "iso_8859_1",
                "iso_8859_1_1987", "iso_ir_100", "8859", "cp819", "ibm819", "csisolatin1"},
    "utf-8": {"utf8", "utf_8", "u8", "utf", "utf8_ucs2", "utf8_ucs4", "cp65001"},
    "ascii": {"ascii", "646", "us_ascii", "us", "ansi_x3.4_1968", "ansi_x3_4_1968", "cp367",
              "csascii", "ibm367", "iso646_us", "iso_646.irv_1991", "iso_ir_6"},
}


def _codec(name: Any) -> str | None:
    if not isinstance(name, str):
        return None
    norm = name.strip().lower().replace("-", "_").replace(" ", "_")
    return next((c for c, names in _CODEC_ALIASES.items() if norm in names), None)


def literal_bytes(value: Any, depth: int = 0) -> bytes | LazyBytes | None:
    """Bytes written in the stream, including protocol 2's ``_codecs.encode(str, 'latin1')``
    (any spelling of the codec ``codecs.lookup`` accepts) and ``bytearray(b'...')``/
    ``bytes(b'...')`` around them."""
    if isinstance(value, (bytes, bytearray, LazyBytes)):
        return value
    if isinstance(value, Call) and depth < 4:
        name = value.func_name
        if name in ("builtins.bytearray", "builtins.bytes") and len(value.args) == 1:
            return literal_bytes(value.args[0], depth + 1)
        if name in ("_codecs.encode", "codecs.encode") and len(value.args) == 2 \
                and isinstance(value.args[0], str):
            codec = _codec(value.args[1])
            try:
                return value.args[0].encode(codec) if codec else None
            except UnicodeEncodeError:
                return None
        return None
    if isinstance(value, str):  # protocol 0/1 numpy data is a latin-1 str
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            return None
    return None


def state_dict_of(call: Call) -> dict[Any, Any] | None:
    """The ``__dict__`` part of an object's BUILD state, if it has one."""
    state = call.state
    if isinstance(state, Builds):
        merged: dict[Any, Any] = {}
        for s in state:
            part = _state_dict_of_value(s)
            if part:
                merged.update(part)
        return merged
    return _state_dict_of_value(state)


def _state_dict_of_value(state: Any) -> dict[Any, Any] | None:
    if isinstance(state, dict):
        return state
    if isinstance(state, tuple) and len(state) == 2:
        a, b = state
        merged: dict[Any, Any] = {}
        if isinstance(a, dict):
            merged.update(a)
        if isinstance(b, dict):
            merged.update(b)
        if isinstance(a, dict) or isinstance(b, dict):
            return merged
    return None


def device_str(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Call) and value.func_name == "torch.device" and value.args:
        kind = value.args[0]
        if len(value.args) > 1 and isinstance(value.args[1], int):
            return f"{kind}:{value.args[1]}"
        return str(kind)
    return None


def dtype_name(value: Any) -> str | None:
    if isinstance(value, GlobalRef) and value.literal and value.module == "torch":
        return value.name
    return None


def shape_of(value: Any) -> tuple[int, ...]:
    if isinstance(value, Call) and value.func_name == "torch.Size" and value.args:
        value = value.args[0]
    if not isinstance(value, (tuple, list)) or len(value) > MAX_NDIM:
        raise ValueError("not a shape")
    for v in value:
        # torch sizes and strides are 64-bit: a bigger integer is no shape (and multiplying
        # megabyte integers for every tensor would take minutes)
        if type(v) is not int or not -_INT64 <= v < _INT64:
            raise ValueError("not a shape")
    return tuple(value)


# -- dict semantics ----------------------------------------------------------------------
def last_wins(items: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Dict semantics for SETITEMS on an OrderedDict: a repeated key keeps its first
    position and its last value."""
    merged: dict[Any, tuple[Any, Any]] = {}
    slots: dict[int, Any] = {}  # id(key) -> its dict key: one hash per distinct key object
    try:
        for k, v in items:
            slot = slots.get(id(k))
            if slot is None:
                slot = slots[id(k)] = _Hashed(safe_key(k))
            merged[slot] = (k, v)
    except TypeError:  # an unhashable key: a real unpickler would have failed here
        return items
    return list(merged.values())


class _Hashed:
    """A key with its hash computed once (a tuple's hash is not cached by Python)."""

    __slots__ = ("hash", "key")

    def __init__(self, key: Any):
        self.key = key
        self.hash = hash(key)

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Hashed) and (other.key is self.key or other.key == self.key)
