"""A large index parsed in pieces (core/layouts/_index_json.py) gives exactly what one
orjson.loads gives, or the same error: on transformers' own layout and on documents
doctored to trip the cutting."""

from __future__ import annotations

import json
import random

import orjson
import pytest

from ckpt_inspector.core.layouts import _index_json, hf_sharded


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch):
    """Pieces of a few hundred bytes, so that small documents are cut many times."""
    monkeypatch.setattr(_index_json, "PIECES_FROM", 0)
    monkeypatch.setattr(_index_json, "PIECE", 300)


def _index(n=400, **dump):
    weight_map = {f"model.layers.{i // 7}.w{i % 7}": f"model-{i % 3 + 1:05d}-of-00003.safetensors"
                  for i in range(n)}
    dump = {"indent": 2, "sort_keys": True, **dump}
    return json.dumps({"metadata": {"total_size": 123}, "weight_map": weight_map},
                      **dump).encode()


def outcome(fn, raw):
    try:
        value = fn(raw)
    except orjson.JSONDecodeError:
        return "refused"
    return ("ok", value, list(value["weight_map"]) if isinstance(value, dict) and
            isinstance(value.get("weight_map"), dict) else None)


def same(raw):
    assert outcome(_index_json.loads, raw) == outcome(orjson.loads, raw)


def test_transformers_layout_is_read_in_pieces(monkeypatch):
    raw = _index()
    sizes = []
    real = orjson.loads
    monkeypatch.setattr(_index_json.orjson, "loads", lambda b: sizes.append(len(b)) or real(b))
    assert _index_json._in_pieces(raw) == real(raw)
    assert len(sizes) > 20 and max(sizes[1:]) < 500, sizes  # the rest, then small pieces


@pytest.mark.parametrize("raw", [
    _index(),
    _index(1),
    _index(ensure_ascii=False).replace(b"layers.3.", "lägers.3.".encode()),
    _index().replace(b"\n", b"\r\n"),
    _index(indent=None).replace(b", ", b",\n"),
    # the map not last, or another member named like it
    json.dumps({"weight_map": {"a": "x", "b": "y"}, "z": {"q": 1}}, indent=2).encode(),
    json.dumps({"metadata": {"weight_map": {"a": "b"}}, "weight_map": {"a": "c"}},
               indent=2).encode(),
    json.dumps({"metadata": {"weight_map": {"a": "b"}}}, indent=2).encode(),
    json.dumps({"weight_map": {'x"weight_map': "a", "y": "b"}}, indent=2).encode(),
    json.dumps({"weight_map": {"n": {"deep": [1, 2, {"x": 3}]}, "m": "b"}}, indent=2).encode(),
    # a value nested to orjson's limit counted in the document, not in its piece
    b'{"weight_map": {"a": "x",\n"b": ' + b"[" * 1023 + b"]" * 1023 + b"}}",
    b'{"weight_map": {"a": "x",\n"b": ' + b"[" * 300 + b"]" * 300 + b"}}",
    json.dumps({"weight_map": {}}, indent=2).encode(),
    json.dumps({"weight_map": []}, indent=2).encode(),
    json.dumps([{"weight_map": {"a": "b"}}], indent=2).encode(),
    # duplicate names across pieces: the last one wins, as in one parse
    _index(300).replace(b'"model.layers.40.w0"', b'"model.layers.0.w0"'),
    # broken documents: a missing or doubled comma, a trailing one, NaN, a cut file
    _index().replace(b'",\n    "model.layers.20', b'"\n    "model.layers.20'),
    _index().replace(b'",\n    "model.layers.20', b'",,\n    "model.layers.20'),
    _index().replace(b'safetensors"\n  }', b'safetensors",\n  }'),
    _index().replace(b'safetensors"\n  }', b'safetensors",}'),
    _index().replace(b'safetensors"\n  }', b'safetensors",\n}'),  # the last cut: a comma
    _index(indent=None).replace(b", ", b",\n").replace(b'"}}', b'",\n}}'),
    _index().replace(b'safetensors"\n  }', b'safetensors"}'),
    _index().replace(b'"model-00002-of-00003.safetensors"', b"NaN", 1),
    _index()[:-40],
    b"",
])
def test_agrees_with_one_parse(raw):
    same(raw)


@pytest.mark.parametrize("seed", range(3))
def test_damaged_documents_agree(seed):
    rng = random.Random(seed)
    base = _index(120)
    for _ in range(400):
        buf = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(buf))
            action = rng.randrange(3)
            if action == 0:
                buf[at] = rng.choice(b'{}[],:"\n \\x0')
            elif action == 1:
                buf.insert(at, rng.choice(b'{}[],:"\n \\x0'))
            else:
                del buf[at]
        same(bytes(buf))


def test_read_json_still_accepts_what_python_json_does(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors.index.json"
    path.write_bytes(_index().replace(b"123", b"NaN"))
    assert hf_sharded.read_json(str(path), path.name)["metadata"]["total_size"] != 123


@pytest.mark.parametrize("start", [0, 1, 250, 299, 300, 301])
def test_find_in_windows_is_find(start):
    raw = _index(60)
    for needle in (b'"weight_map"', b"model-00003", b"}", b"not there"):
        assert _index_json._find(raw, needle, start) == raw.find(needle, start)
    for at in range(0, 1200, 7):  # a needle across every window's edge
        doc = b"x" * at + b'"weight_map"' + b"y" * 700
        assert _index_json._find(doc, b'"weight_map"', start) == doc.find(b'"weight_map"', start)
