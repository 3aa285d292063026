"""``torch.export.save`` archives (``.pt2``): an exported program's weights and graph.

Layout: ``<root>/archive_format`` says ``pt2``; ``<root>/data/weights/*_weights_config.json``
maps each state_dict name to a record ``data/weights/<path_name>`` holding its raw bytes
(or, with ``use_pickle``, a small ``torch.save`` file) plus dtype, sizes and strides;
constants work the same way; ``<root>/models/*.json`` is the serialized graph and
``<root>/data/sample_inputs/*.pt`` the example inputs, saved with ``torch.save``. Every
embedded torch file is read (and scanned) like any other; the graph is summarized.
"""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from typing import Any

from ckpt_inspector.core.formats import _zip, torch_zip
from ckpt_inspector.core.formats._common import Blob, fail
from ckpt_inspector.core.pickle_tree import check_tensor
from ckpt_inspector.core.tensors import ZipEntryData
from ckpt_inspector.core.tree import Checkpoint, Node, StorageInfo, TensorInfo

# torch._export.serde.schema.ScalarType -> torch dtype name
SCALAR_TYPES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16",
                7: "float32", 8: "float64", 9: "complex32", 10: "complex64", 11: "complex128",
                12: "bool", 13: "bfloat16", 28: "uint16", 29: "float8_e4m3fn",
                30: "float8_e5m2", 31: "float8_e4m3fnuz", 32: "float8_e5m2fnuz",
                33: "float8_e8m0fnu", 34: "uint32", 35: "uint64"}
MAX_JSON_BYTES = 256 << 20


def is_pt2(names: list[str]) -> bool:
    return any(n.endswith("/archive_format") and n.count("/") == 1 for n in names)


def read(path: str) -> Checkpoint:
    blob = Blob(path)
    ckpt = Checkpoint(path, "pt2", None, file_size=len(blob))  # type: ignore[arg-type]
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError) as err:
        raise fail(ckpt, f"damaged zip archive: {err}") from None
    with zf:
        infos = zf.infolist()
    _zip.audit(ckpt, blob.data, infos, "")
    names = {i.filename: i for i in infos}
    root_dir = next(n for n in names if n.endswith("/archive_format")).rsplit("/", 1)[0] + "/"
    root = Node("dict", None, "torch.export program")

    def read_json(info: zipfile.ZipInfo) -> Any:
        try:
            raw, _crc, _local = _zip.read_checked(blob.data, info, MAX_JSON_BYTES)
            return json.loads(raw)
        except (_zip.MemberError, ValueError, UnicodeDecodeError) as err:
            raise fail(ckpt, f"{info.filename}: {err}") from None

    for kind in ("weights", "constants"):
        prefix = f"{root_dir}data/{kind}/"
        target = root if kind == "weights" else Node("dict", "constants", "constants")
        for cname, cinfo in names.items():
            if not (cname.startswith(prefix) and cname.endswith("_config.json")):
                continue
            config = read_json(cinfo)
            entries = config.get("config", {}) if isinstance(config, dict) else {}
            for key, entry in entries.items():
                target.add(_tensor_node(ckpt, blob, names, prefix, key, entry))
        if kind == "constants" and target.children:
            root.add(target)

    # embedded torch.save files (sample inputs): read, so their pickles are scanned
    for name, info in names.items():
        if name.startswith(f"{root_dir}data/sample_inputs/") and not name.endswith("/"):
            try:
                data, _crc, _local = _zip.read_checked(blob.data, info, 1 << 30)
                node = torch_zip.read_into(ckpt, Blob(f"{path}!{name}", data), f"{name}/")
                node.key = f"sample inputs ({name.rsplit('/', 1)[-1]})"
                for n in node.walk():  # example inputs, not part of the model's state
                    if n.kind == "tensor":
                        n.role = "attribute"
                root.add(node)
            except Exception as err:  # reported as a warning; the rest still reads
                ckpt.warnings.append(f"{name}: {err}")

    ops: Counter[str] = Counter()
    graphs = 0
    for name, info in names.items():
        if name.startswith(f"{root_dir}models/") and name.endswith(".json"):
            graphs += 1
            model = read_json(info)
            nodes = (model.get("graph_module", {}).get("graph", {}).get("nodes", [])
                     if isinstance(model, dict) else [])
            for n in nodes:
                if isinstance(n, dict):
                    ops[str(n.get("target", "?"))] += 1
    ckpt.metadata.update({"archive root": root_dir.rstrip("/"), "records": len(infos),
                          "graphs": graphs, "nodes": sum(ops.values()),
                          "operators": dict(ops.most_common())})
    ckpt.root = root
    return ckpt


def _tensor_node(ckpt: Checkpoint, blob: Blob, names: dict[str, zipfile.ZipInfo], prefix: str,
                 key: str, entry: Any) -> Node:
    meta = entry.get("tensor_meta", {}) if isinstance(entry, dict) else {}
    dtype = SCALAR_TYPES.get(meta.get("dtype"), f"pt2:{meta.get('dtype')}")

    def ints(values: Any) -> tuple[int, ...]:
        out = []
        for v in values or []:
            if not (isinstance(v, dict) and isinstance(v.get("as_int"), int)):
                raise ValueError("symbolic size")
            out.append(v["as_int"])
        return tuple(out)

    info = TensorInfo(dtype, (), None)
    try:
        info.shape = ints(meta.get("sizes"))
        info.stride = ints(meta.get("strides"))
        offset = meta.get("storage_offset", {}).get("as_int", 0)
    except (ValueError, AttributeError):
        info.problem = "symbolic or malformed sizes"
        return Node("tensor", key, "torch.Tensor", tensor=info)
    device = meta.get("device") or {}
    info.device = str(device.get("type", "cpu")) + (
        f":{device['index']}" if device.get("index") is not None else "")
    info.requires_grad = bool(meta.get("requires_grad"))
    info.is_parameter = bool(entry.get("is_param"))
    record = names.get(prefix + str(entry.get("path_name", "")))
    if record is None:
        info.problem = "weight record missing from the archive"
    elif entry.get("use_pickle"):
        info.problem = "stored with torch.save inside the archive: shown, not decoded"
    else:
        numel = record.file_size // (1 if dtype.startswith("pt2:") else
                                     max(1, _itemsize(dtype)))
        info.storage = StorageInfo(str(entry.get("path_name")), dtype, numel, info.device,
                                   ZipEntryData(blob.path, record))
        info.storage_offset = offset
        info.problem = check_tensor(info, offset, info.storage)
    node = Node("tensor", key, "torch.nn.Parameter" if info.is_parameter else "torch.Tensor",
                tensor=info)
    node.role = "parameter" if info.is_parameter else "buffer"
    return node


def _itemsize(dtype: str) -> int:
    from ckpt_inspector.core import dtypes

    return dtypes.itemsize(dtype) or 1
