"""DCP items saved through stream transforms (``_StorageInfo.transform_descriptors``).

``FileSystemWriter(_extensions=[ZStandard()])`` (torch's experimental extensions,
``torch/distributed/checkpoint/_extension.py``) compresses each item as one zstd stream
and records ``["stream.zstd/1"]``; the reader applies the transforms in the order listed.
That is the only transform torch registers: it is read where a zstd module is installed
(``zstandard``, ``pyzstd``, or Python 3.14's ``compression.zstd``), inflated with a bound;
any other descriptor is refused, the entry shown damaged with the reason.

A compressed item cannot be read in place: it is inflated once when the folder is opened
(its pickle interpreted and scanned like any other), then dropped; its tensors'
:class:`Inflated` sources inflate it again when their bytes are asked for (the last few
kept), so the checkpoint is never held in memory whole.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.tensors import DataSource

ZSTD = "stream.zstd"
MAX_INFLATED = 1 << 30  # an item of unknown size (a bytes entry) inflates to at most this
_KEEP = 2  # items kept inflated for their tensors' reads


def _zstd_module() -> str | None:
    import importlib.util

    for name in ("zstandard", "pyzstd", "compression.zstd"):
        try:
            if importlib.util.find_spec(name) is not None:
                return name
        except (ImportError, ValueError):
            continue
    return None


def check(descriptors: Any) -> list[str]:
    """The descriptors, each one this reader applies; :class:`CheckpointError` (the
    reason, shown on the entry) otherwise."""
    if not isinstance(descriptors, (list, tuple)) or not all(
            isinstance(d, str) for d in descriptors):
        raise CheckpointError(f"saved through transforms described as {descriptors!r}, "
                              "which this reader does not know: not read")
    for desc in descriptors:
        name, _, version = desc.partition("/")
        if name != ZSTD or version.partition(".")[0] != "1":
            raise CheckpointError(f"saved through the transform {desc!r}, which this reader "
                                  "does not know: not read")
        if _zstd_module() is None:
            raise CheckpointError(f"saved zstd-compressed ({desc}): reading it needs the "
                                  "zstandard package (pip install zstandard)")
    return list(descriptors)


def _unzstd(data: bytes | memoryview, limit: int) -> bytes:
    module = _zstd_module()
    if module == "zstandard":
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
            out = reader.read(limit + 1)
            while len(out) <= limit:
                more = reader.read(limit + 1 - len(out))
                if not more:
                    break
                out += more
    elif module == "pyzstd":
        import pyzstd

        out = pyzstd.EndlessZstdDecompressor().decompress(bytes(data), limit + 1)
    else:
        from compression import zstd  # type: ignore[import-not-found]

        out = zstd.ZstdDecompressor().decompress(bytes(data), limit + 1)
    if len(out) > limit:
        raise CheckpointError(f"inflates to more than the {limit:,} bytes it can hold")
    return out


def inflate(data: bytes | memoryview, descriptors: list[str], limit: int) -> bytes:
    """The item's bytes through its transforms, at most ``limit`` bytes."""
    try:
        for _desc in descriptors:
            data = _unzstd(data, limit)
    except CheckpointError:
        raise
    except Exception as err:  # a damaged stream: the library's own error, in one line
        raise CheckpointError(f"cannot inflate it: {type(err).__name__}: {err}") from None
    return bytes(data)


_CACHE: OrderedDict[tuple[str, int], bytes] = OrderedDict()


class Inflated(DataSource):
    """A storage of a compressed item: inflated again on use (the last few kept)."""

    def __init__(self, path: str, offset: int, length: int, descriptors: list[str],
                 limit: int, inner: Any):
        self.where = (path, offset, length)
        self.descriptors = descriptors
        self.limit = limit
        self.info = inner.info
        self.nbytes = inner.nbytes
        self.byteorder = inner.byteorder

    def buffer(self) -> memoryview:
        from ckpt_inspector.core.formats._zip_members import ZipEntryData
        from ckpt_inspector.core.tensors import mapped_file

        path, offset, length = self.where
        key = (path, offset)
        data = _CACHE.get(key)
        if data is None:
            raw = memoryview(mapped_file(path))[offset:offset + length]
            data = inflate(raw, self.descriptors, self.limit)
            _CACHE[key] = data
            while len(_CACHE) > _KEEP:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(key)
        return ZipEntryData(data, self.info, self.byteorder).buffer()

    def __repr__(self) -> str:
        return f"Inflated({self.where!r}, {self.descriptors})"
