"""Bare pickle streams: payloads in the shapes loaders accept and sniffers may not.

``pickle.load`` (and ``torch.load``, which starts with it for a non-zip file) takes any
opcode as the first one, with or without PROTO, inside a FRAME or not, and stops at the
first STOP. So the mutations put a payload behind unusual first opcodes, inside frames,
in front of or behind the original stream, and cut streams right after the payload.
"""

from __future__ import annotations

import random

import payloads


def mutate(rng: random.Random, data: bytes) -> bytes | None:
    choice = rng.randrange(7)
    if choice == 6:
        return payloads.benign_pickle(rng)
    if choice == 0:
        return payloads.payload_pickle(rng)
    if choice == 1:  # an odd first opcode in front of the original stream
        return payloads.odd_prefix(rng, data)
    if choice == 2:  # the payload, then the stream breaks
        stream = payloads.payload_pickle(rng)
        return stream[:-1] + rng.choice((b"", b"\xff", b"0", b"\x80\x09", b"h\x63"))
    if choice == 3:  # a second stream after STOP (a second pickle.load runs it)
        return data + payloads.payload_pickle(rng)
    if choice == 4:  # the payload inside the original object: before its STOP
        if data.endswith(b"."):
            return data[:-1] + b"(" + payloads.body(rng) + b"1."
        return None
    # a FRAME around the original stream, its length right or wrong
    body = data[2:] if data[:1] == b"\x80" else data
    frame = payloads.framed(body)
    if rng.random() < 0.3:
        frame = frame[:1] + (len(body) + rng.choice((-1, 1, 100))).to_bytes(8, "little",
                                                                           signed=True) \
            + frame[9:]
    return (data[:2] if data[:1] == b"\x80" else b"") + frame
