"""``torch.export.save`` archives (.pt2): mutations of the JSON records and of what
``torch.export.load`` unpickles.

The container is a zip (every :mod:`zip_mutator` mutation applies), but the reader's
interesting code is behind it: the weights and constants configs (``tensor_meta`` with
``dtype``, ``sizes``, ``strides``, ``storage_offset``, ``device``; ``path_name``;
``use_pickle``), the graph JSON, and the records torch.export.load hands to ``torch.load``
or ``pickle.loads`` (``use_pickle`` weights, ``custom_obj_``/``opaque_obj_`` constants,
sample inputs).
"""

from __future__ import annotations

import json
import random

import json_values
import payloads
import zip_mutator
from zip_mutator import Entry, Zip

META_KEYS = ("tensor_meta", "dtype", "sizes", "strides", "storage_offset", "device", "index",
             "type", "as_int", "path_name", "use_pickle", "is_param", "requires_grad",
             "config", "layout")
GRAPH_KEYS = ("graph_module", "graph", "nodes", "target", "inputs", "outputs", "schema_version")


def _find(z: Zip, suffix: bytes) -> list[Entry]:
    return [e for e in z.entries if e.name.endswith(suffix)]


def _root(z: Zip) -> bytes:
    for e in z.entries:
        if e.name.endswith(b"/archive_format"):
            return e.name[: -len(b"archive_format")]
    return b"archive/"


def _load(e: Entry):
    try:
        return json.loads(e.plain)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _entries(e: Entry) -> list:
    value = _load(e)
    config = value.get("config") if isinstance(value, dict) else None
    return list(config.values()) if isinstance(config, dict) else []


def m_config(rng: random.Random, z: Zip) -> None:
    """Edit a weights/constants config: wrong types, huge sizes, missing records."""
    configs = _find(z, b"_config.json")
    if not configs:
        return
    e = rng.choice(configs)
    value = _load(e)
    if value is None:
        return
    for _ in range(rng.randint(1, 3)):
        value = json_values.mutate_value(rng, value, META_KEYS)
    e.plain = json_values.dumps(rng, value)


def m_meta(rng: random.Random, z: Zip) -> None:
    """Targeted edits of one entry's tensor_meta (the fields the reader trusts)."""
    configs = [c for c in _find(z, b"weights_config.json") if _load(c)]
    if not configs:
        return
    e = rng.choice(configs)
    value = _load(e)
    entries = value.get("config") if isinstance(value, dict) else None
    if not isinstance(entries, dict) or not entries:
        return
    entry = entries[rng.choice(list(entries))]
    if not isinstance(entry, dict):
        return
    meta = entry.get("tensor_meta")
    choice = rng.randrange(9)
    if choice == 0:
        entry["tensor_meta"] = rng.choice((None, [], "x", 7, {}))
    elif not isinstance(meta, dict):
        return
    elif choice == 1:
        meta["dtype"] = rng.choice((None, "7", 7.0, [7], {"x": 1}, 99, -1, 1 << 70, True, 9, 33))
    elif choice == 2:
        meta["sizes"] = rng.choice((
            [{"as_int": 1 << 62}, {"as_int": 1 << 62}], [{"as_int": -1}],
            [{"as_int": 3}] * 200, [{"as_expr": {"expr_str": "s0"}}], [3, 4], None, "x",
            [{"as_int": 1.5}], [{"as_int": True}], [{"as_int": 10 ** 30}]))
    elif choice == 3:
        meta["strides"] = rng.choice(([{"as_int": -1}], [{"as_int": 1 << 62}], [], None,
                                      [{"as_int": 0}, {"as_int": 0}]))
    elif choice == 4:
        meta["storage_offset"] = rng.choice(({"as_int": -1}, {"as_int": 1 << 62}, None, 3,
                                             {"as_int": "1"}, [], {"as_expr": 1}))
    elif choice == 5:
        meta["device"] = rng.choice(("cuda", None, [], {"type": ["cpu"]}, {"index": "0"},
                                     {"type": "cuda", "index": 1 << 40}, {"type": None}))
    elif choice == 6:
        entry["path_name"] = rng.choice(("../weights_config.json", "", None, 3, "missing",
                                         "weight_0/", ["weight_0"]))
    elif choice == 7:  # torch.load runs this record
        entry["use_pickle"] = True
        record = _record_for(z, entry)
        if record is not None and rng.random() < 0.8:
            record.plain = rng.choice((zip_mutator.torch_zip(rng, payloads.payload_pickle(rng)),
                                       payloads.payload_pickle(rng)))
    else:
        entry["use_pickle"] = rng.choice(("yes", 1, [], None, 0))
    e.plain = json_values.dumps(rng, value) if rng.random() < 0.2 else \
        json.dumps(value).encode()


def _record_for(z: Zip, entry: dict) -> Entry | None:
    name = entry.get("path_name")
    if not isinstance(name, str):
        return None
    for e in z.entries:
        if e.name.endswith(b"/" + name.encode()) and b"/data/" in e.name:
            return e
    return None


def m_constant(rng: random.Random, z: Zip) -> None:
    """A constant torch.export.load unpickles: ``tensor_constant*`` with use_pickle (torch.load),
    ``custom_obj*`` (torch's C++ pickle loader) or ``opaque_obj*`` (pickle.loads)."""
    root = _root(z)
    configs = _find(z, b"constants_config.json")
    if configs:
        config = configs[0]
    else:
        config = Entry(root + b"data/constants/model_constants_config.json", b'{"config": {}}')
        z.entries.append(config)
    value = _load(config)
    if not isinstance(value, dict) or not isinstance(value.get("config"), dict):
        value = {"config": {}}
    kind = rng.choice(("tensor_constant0", "custom_obj_0", "opaque_obj_0"))
    body = payloads.payload_pickle(rng)
    if kind == "tensor_constant0" or rng.random() < 0.3:
        body = zip_mutator.torch_zip(rng, body)
    # a real tensor_meta keeps the reader going; torch skips it for pickled records
    metas = [e.get("tensor_meta") for c in _find(z, b"weights_config.json")
             for e in _entries(c) if isinstance(e, dict)]
    value["config"][f"c{rng.randrange(9)}"] = {
        "path_name": kind, "is_param": False, "use_pickle": rng.random() < 0.9,
        "tensor_meta": rng.choice(metas) if metas and rng.random() < 0.8 else None}
    config.plain = json.dumps(value).encode()
    z.entries.append(Entry(root + b"data/constants/" + kind.encode(), body))


def m_graph(rng: random.Random, z: Zip) -> None:
    models = [e for e in z.entries if b"/models/" in e.name and e.name.endswith(b".json")]
    if not models:
        return
    e = rng.choice(models)
    value = _load(e)
    if value is None:
        return
    choice = rng.randrange(3)
    if choice == 0 and isinstance(value, dict):
        value["graph_module"] = rng.choice((None, [], "x", {"graph": []}, {"graph": None},
                                            {"graph": {"nodes": {"a": 1}}},
                                            {"graph": {"nodes": [None, 3, {"target": {}}]}}))
    else:
        value = json_values.mutate_value(rng, value, GRAPH_KEYS)
    e.plain = json_values.dumps(rng, value)


def m_sample_inputs(rng: random.Random, z: Zip) -> None:
    inputs = [e for e in z.entries if b"/sample_inputs/" in e.name]
    target = rng.choice(inputs) if inputs else None
    if target is None:
        target = Entry(_root(z) + b"data/sample_inputs/model.pt", b"")
        z.entries.append(target)
    target.plain = rng.choice((
        zip_mutator.torch_zip(rng, payloads.payload_pickle(rng)),
        payloads.payload_pickle(rng), target.plain[:rng.randrange(len(target.plain) + 1)],
        b"", b"PK\x05\x06" + b"\0" * 18))


def m_legacy_weights(rng: random.Random, z: Zip) -> None:
    """``data/weights/<model>.pt``: the old layout torch.export.load still accepts."""
    z.entries.append(Entry(_root(z) + b"data/weights/model.pt",
                           zip_mutator.torch_zip(rng, payloads.payload_pickle(rng))))


def m_layout(rng: random.Random, z: Zip) -> None:
    """The records that make it a .pt2: archive_format, a second root, its content."""
    fmt = _find(z, b"/archive_format")
    choice = rng.randrange(4)
    if choice == 0 and fmt:
        fmt[0].plain = rng.choice((b"pt3", b"", b"\xff" * 3, b"pt2" * 1000))
    elif choice == 1 and fmt:
        z.entries.remove(fmt[0])
    elif choice == 2:
        z.entries.insert(0, Entry(b"other/archive_format", b"pt2"))
    else:
        z.entries.append(Entry(b"deep/er/archive_format", b"pt2"))


MUTATIONS = (m_config, m_meta, m_meta, m_meta, m_constant, m_graph, m_sample_inputs,
             m_legacy_weights, m_layout)


def mutate(rng: random.Random, data: bytes) -> bytes | None:
    z = zip_mutator.parse(data)
    if z is None:
        return None
    for _ in range(rng.choice((1, 1, 2, 2, 3))):
        if rng.random() < 0.2:
            rng.choice(zip_mutator.MUTATIONS)(rng, z)
        else:
            rng.choice(MUTATIONS)(rng, z)
    return zip_mutator.build(z)
