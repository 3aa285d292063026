"""A byte range of a remote file read as a file of its own: :class:`WindowSource`.

What a layout needs where one file holds many archives at known offsets (a DCP
``.distcp`` file: one ``torch.save`` archive per item). The window slices, finds and
fetches like :class:`~ckpt_inspector.core.io.remote.RemoteBuffer`, whose block cache it
shares: the readers read an item's structure (its zip directory at its end, ``data.pkl``
at its start) through that cache, and its tensor data straight from the server, a piece at
a time (``fetch``), never the whole range.
"""

from __future__ import annotations

from typing import Any

from ckpt_inspector.core.io.source import BufferReader, Source
from ckpt_inspector.core.tensors import DataSource


class Window:
    """``buffer[offset:offset + length]`` without reading it: ``len``, slicing, ``find``
    and ``fetch`` relative to the window."""

    def __init__(self, buffer: Any, offset: int, length: int):
        self.base = buffer
        self.offset = offset
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int | slice) -> Any:
        if isinstance(key, int):
            i = key + self.length if key < 0 else key
            if not 0 <= i < self.length:
                raise IndexError("index out of range")
            return self.base.read(self.offset + i, self.offset + i + 1)[0]
        start, stop, step = key.indices(self.length)
        if step != 1:
            raise ValueError("a remote file is sliced with step 1 only")
        return self.read(start, stop)

    def read(self, start: int, stop: int) -> bytes:
        stop = min(stop, self.length)
        if stop <= start:
            return b""
        return self.base.read(self.offset + start, self.offset + stop)

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        end = self.length if end is None else min(end, self.length)
        i = self.base.find(sub, self.offset + max(start, 0), self.offset + end)
        return i - self.offset if i >= 0 else -1

    def fetch(self, start: int, stop: int) -> bytes:
        """Bytes straight from the server, not kept (tensor data)."""
        stop = min(stop, self.length)
        return self.base.fetch(self.offset + start, self.offset + stop) if stop > start else b""


class WindowSource(Source):
    """``length`` bytes at ``offset`` of a :class:`RemoteSource`, as a source of its own."""

    def __init__(self, name: str, source: Any, offset: int, length: int):
        super().__init__(name)
        self.outer = source
        self._window = Window(source.data, offset, length)

    @property
    def data(self) -> Window:
        return self._window

    def __len__(self) -> int:
        return self._window.length

    def read(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0:
            raise ValueError("negative offset or length")
        return self._window.read(offset, offset + n)

    def buffer(self) -> bytes:
        return self._window.read(0, self._window.length)

    def range(self, offset: int, length: int, byteorder: str = "little") -> DataSource:
        return self.outer.range(self._window.offset + offset, length, byteorder)

    @property
    def container(self) -> Any:
        return self._window

    @property
    def openable(self) -> Any:
        return BufferReader(self._window)
