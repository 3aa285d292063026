"""Finding a record in a zip the way torch's miniz does: ASCII case-insensitive names,
a binary search over names ordered by miniz's own heap sort (which of two names equal
but for case wins depends on that exact order), and ``PyTorchStreamReader``'s root
folder taken from the first record."""

from __future__ import annotations

from typing import Protocol


class Entry(Protocol):
    """A record as :class:`~._zip.Entry` holds it (what the lookups read)."""

    index: int
    raw_name: bytes
    filename: str

    @property
    def listed_name(self) -> bytes: ...


class MinizLookup:
    """Lookups over ``self.entries`` (a :class:`~._zip.Directory` in directory order);
    :meth:`_index_names` and :meth:`_root` run once the entries are read."""

    entries: list[Entry]
    _by_lower: dict[bytes, Entry] | None
    _sorted: list[int] | None
    case_duplicates: dict[bytes, list[Entry]]
    root: bytes | None

    def _index_names(self) -> None:
        """A dict of ASCII-lowercased names: exact for miniz's binary search as long as no
        two names are equal once lowercased (then :meth:`locate` sorts like miniz)."""
        by_lower: dict[bytes, Entry] = {}
        dups: dict[bytes, list[Entry]] = {}
        for e in self.entries:
            low = e.raw_name.lower()
            first = by_lower.setdefault(low, e)
            if first is not e:
                dups.setdefault(low, [first]).append(e)
        self._by_lower = by_lower
        self.case_duplicates = dups

    def _heap_sorted(self) -> list[int]:
        """``mz_zip_reader_sort_central_dir_offsets_by_filename``, step for step: which of
        two equal names a binary search meets first depends on this exact permutation."""
        if self._sorted is not None:
            return self._sorted
        keys = [e.raw_name.lower() for e in self.entries]
        idx = list(range(len(keys)))
        size = len(idx)
        if size > 1:
            def sift(root: int, end: int) -> None:
                while True:
                    child = 2 * root + 1
                    if child >= end:
                        return
                    if child + 1 < end and keys[idx[child]] < keys[idx[child + 1]]:
                        child += 1
                    if not keys[idx[root]] < keys[idx[child]]:
                        return
                    idx[root], idx[child] = idx[child], idx[root]
                    root = child

            for start in range((size - 2) >> 1, -1, -1):
                sift(start, size)
            for end in range(size - 1, 0, -1):
                idx[end], idx[0] = idx[0], idx[end]
                sift(0, end)
        self._sorted = idx
        return idx

    def locate(self, name: str | bytes) -> Entry | None:
        """``mz_zip_reader_locate_file(name, NULL, 0)``: ASCII case-insensitive, the name
        a C string (cut at its first NUL)."""
        raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
        key = raw.split(b"\0", 1)[0].lower()
        assert self._by_lower is not None
        if key not in self.case_duplicates:
            return self._by_lower.get(key)
        order = self._heap_sorted()
        lo, hi = 0, len(order) - 1
        while lo <= hi:
            mid = lo + ((hi - lo) >> 1)
            entry = self.entries[order[mid]]
            other = entry.raw_name.lower()
            if other == key:
                return entry
            if other < key:
                lo = mid + 1
            else:
                hi = mid - 1
        return None  # pragma: no cover - the key is present

    def _root(self) -> tuple[bytes | None, str | None]:
        """``PyTorchStreamReader::init``: every lookup is prefixed by the folder of the
        FIRST record (up to its first ``/``)."""
        if not self.entries:
            return None, "the archive holds no records"
        first = self.entries[0].raw_name
        if b"/" not in first:
            return None, (f"its first record {first.decode('utf-8', 'replace')!r} is not in a "
                          "folder, so torch refuses the archive")
        return first.split(b"/", 1)[0], None

    def record(self, name: str) -> Entry | None:
        """The record torch's ``getRecord(name)`` reads: ``<root>/<name>``, located by miniz."""
        if self.root is None:
            return None
        return self.locate(self.root + b"/" + name.encode("utf-8", "surrogateescape"))

    @property
    def prefix(self) -> str:
        return "" if self.root is None else self.root.decode("utf-8", "replace") + "/"

    def all_records(self) -> list[str] | None:
        """``get_all_records()``: names under the root, cut like C strings; None where
        torch raises (a record outside the root folder). Listed once."""
        listed = self.__dict__.get("_all_records", self)
        if listed is self:
            listed = self.__dict__["_all_records"] = self._list_records()
        return listed

    def _list_records(self) -> list[str] | None:
        if self.root is None:
            return None
        prefix = self.root.split(b"\0", 1)[0] + b"/"
        out = []
        for e in self.entries:
            listed = e.listed_name
            if not listed.startswith(prefix):
                return None
            out.append(listed[len(prefix):].decode("utf-8", "replace"))
        return out

    def under_root(self, entry: Entry) -> str | None:
        """The record name torch would use for ``entry`` (without the root), or None."""
        prefix = self.prefix.encode("utf-8", "surrogateescape")
        if self.root is None or not entry.raw_name.startswith(prefix):
            return None
        return entry.raw_name[len(prefix):].decode("utf-8", "replace")
