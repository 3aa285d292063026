"""DCP items saved through stream transforms (``_StorageInfo.transform_descriptors``).

``FileSystemWriter(_extensions=[ZStandard()])`` (torch's experimental extensions,
``torch/distributed/checkpoint/_extension.py``) compresses each item as one zstd stream
and records ``["stream.zstd/1"]``; the reader applies the transforms in the order listed.
That is the only transform torch registers: it is read where a zstd module is installed
(``zstandard``, ``pyzstd``, or Python 3.14's ``compression.zstd``), inflated with a bound;
any other descriptor is refused, the entry shown damaged with the reason.

The bound comes from :data:`MAX_INFLATED`, never from the file alone: a tensor chunk may
inflate to twice the bytes ``.metadata`` gives its shape (plus 16 MiB), never past the
cap, and a chunk whose shape alone is past the cap is not inflated at all. The library is
asked for :data:`PIECE` bytes at a time, so what is held is what came out, not the bound.

A compressed item cannot be read in place: it is inflated once when the folder is opened
(its pickle interpreted and scanned like any other), then dropped; its tensors'
:class:`Inflated` sources inflate it again when their bytes are asked for (the last few
kept), so the checkpoint is never held in memory whole.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.tensors import DataSource

ZSTD = "stream.zstd"
MAX_INFLATED = 1 << 30  # no item inflates to more than this
PIECE = 1 << 20  # bytes asked of the zstd library at a time
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


def _pieces(data: bytes | memoryview) -> Iterator[bytes]:
    """The inflated bytes of one zstd stream, :data:`PIECE` bytes at a time (the libraries
    allocate what they are asked for up front: never ask for more)."""
    module = _zstd_module()
    if module == "zstandard":
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(data) as reader:
            while piece := reader.read(PIECE):
                yield piece
        return
    if module == "pyzstd":
        import pyzstd

        decomp: Any = pyzstd.EndlessZstdDecompressor()
    else:
        from compression import zstd  # type: ignore[import-not-found]

        decomp = zstd.ZstdDecompressor()
    piece = decomp.decompress(bytes(data), PIECE)
    while piece:
        yield piece
        if getattr(decomp, "eof", False) or decomp.needs_input:
            return
        piece = decomp.decompress(b"", PIECE)


def _unzstd(data: bytes | memoryview, limit: int) -> memoryview:
    out = bytearray()
    for piece in _pieces(data):
        out += piece
        if len(out) > limit:
            raise CheckpointError(f"inflates to more than the {limit:,} bytes it can hold")
    return memoryview(out).toreadonly()


def inflate(data: bytes | memoryview, descriptors: list[str], limit: int,
            size: int | None = None) -> memoryview:
    """The item's bytes through its transforms (read-only), at most ``limit`` bytes;
    exactly ``size`` bytes where given (what it inflated to when the folder was opened)."""
    try:
        for _desc in descriptors:
            data = _unzstd(data, limit)
    except CheckpointError:
        raise
    except Exception as err:  # a damaged stream: the library's own error, in one line
        raise CheckpointError(f"cannot inflate it: {type(err).__name__}: {err}") from None
    if size is not None and len(data) != size:
        raise CheckpointError(f"inflates to {len(data):,} bytes where it inflated to "
                              f"{size:,} when opened: the file changed")
    return memoryview(data).toreadonly()


def limit_for(expected: int | None) -> int:
    """What an item may inflate to: a tensor chunk of ``expected`` bytes (from
    ``.metadata``, so never trusted beyond :data:`MAX_INFLATED`), or a bytes entry."""
    if expected is None:
        return MAX_INFLATED
    if expected > MAX_INFLATED:
        raise CheckpointError(f"a compressed chunk of {expected:,} bytes: more than the "
                              f"{MAX_INFLATED:,} ckpt-inspector inflates: not read")
    return min(MAX_INFLATED, 2 * expected + (16 << 20))


_CACHE: OrderedDict[tuple[str, int], memoryview] = OrderedDict()


class Inflated(DataSource):
    """A storage of a compressed item: inflated again on use (the last few kept).
    ``fetch(start, stop)`` gets the item's bytes where ``path`` is a URL."""

    def __init__(self, path: str, offset: int, length: int, descriptors: list[str],
                 size: int, inner: Any, fetch: Callable[[int, int], bytes] | None = None):
        self.where = (path, offset, length)
        self.fetch = fetch
        self.descriptors = descriptors
        self.size = size  # what the item inflated to when the folder was opened
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
            if self.fetch is not None:  # a remote item: fetched whole, as when opened
                raw = memoryview(self.fetch(offset, offset + length))
            else:
                raw = memoryview(mapped_file(path))[offset:offset + length]
            data = inflate(raw, self.descriptors, self.size, self.size)
            _CACHE[key] = data
            while len(_CACHE) > _KEEP:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(key)
        return ZipEntryData(data, self.info, self.byteorder).buffer()

    def __repr__(self) -> str:
        return f"Inflated({self.where!r}, {self.descriptors})"
