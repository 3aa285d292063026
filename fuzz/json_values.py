"""JSON edits shared by the .pt2 and safetensors mutators: values of the wrong type,
sizes that overflow, keys removed, and text that is barely JSON."""

from __future__ import annotations

import json
import random
from typing import Any

BIG_INTS = (-1, 0, 1, 2, 255, 256, 1 << 31, (1 << 31) - 1, 1 << 32, 1 << 53, (1 << 63) - 1,
            1 << 63, 1 << 64, -(1 << 63), 10 ** 30)


def weird(rng: random.Random, like: Any = None) -> Any:
    """A value a careless reader does not expect where ``like`` was."""
    pool: list[Any] = [None, True, False, 0, -1, 1.5, float("nan"), float("inf"), "", "x",
                       "7", [], {}, [None], {"as_int": "3"}, [[1]], rng.choice(BIG_INTS),
                       "\udcff" if rng.random() < 0.1 else "é"]
    if isinstance(like, int) and not isinstance(like, bool):
        pool += [rng.choice(BIG_INTS)] * 6 + [like + 1, like - 1, -like]
    if isinstance(like, list):
        pool += [like * rng.randint(2, 50), like[:-1], [*like, like[-1] if like else 0],
                 list(reversed(like))]
    if isinstance(like, dict):
        pool += [list(like.values()), dict.fromkeys(like)]
    return rng.choice(pool)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (a tuple of keys and indexes) into a JSON value."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:50]):
            out += paths(v, (*prefix, i))
    return out


def get(value: Any, path: tuple) -> Any:
    for k in path:
        value = value[k]
    return value


def set_at(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    get(value, path[:-1])[path[-1]] = new
    return value


def delete_at(value: Any, path: tuple) -> Any:
    if path:
        parent = get(value, path[:-1])
        del parent[path[-1]]
    return value


def mutate_value(rng: random.Random, value: Any, prefer: tuple[str, ...] = ()) -> Any:
    """One edit somewhere in ``value``; paths ending in a ``prefer`` key are chosen more."""
    every = paths(value)
    liked = [p for p in every if p and isinstance(p[-1], str) and p[-1] in prefer]
    path = rng.choice(liked) if liked and rng.random() < 0.75 else rng.choice(every)
    choice = rng.randrange(4)
    if choice == 0 and path:
        return delete_at(value, path)
    if choice == 1 and path:  # the same key twice as deep: a nested copy
        return set_at(value, path, [get(value, path)] * rng.randint(1, 3))
    return set_at(value, path, weird(rng, get(value, path)))


def dumps(rng: random.Random, value: Any) -> bytes:
    """JSON text, sometimes written the odd ways a parser must still survive."""
    text = json.dumps(value, allow_nan=True, ensure_ascii=rng.random() < 0.5)
    choice = rng.randrange(10)
    if choice == 0:
        return ("[" * 100_000 + "]" * 100_000).encode() if rng.random() < 0.3 else \
            ('{"a":' * 5000 + "1" + "}" * 5000).encode()
    if choice == 1 and text.startswith("{") and len(text) > 2:
        # a duplicate key: json keeps the last, other parsers the first
        return (text[:-1] + ', ' + text[1:]).encode("utf-8", "surrogatepass")
    if choice == 2:
        return ("\ufeff" + text).encode("utf-8", "surrogatepass")
    if choice == 3:
        return text.encode("utf-8", "surrogatepass") + b" " * rng.choice((1, 7, 100))
    return text.encode("utf-8", "surrogatepass")
