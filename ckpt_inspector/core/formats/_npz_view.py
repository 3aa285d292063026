"""A file ``numpy.load`` opens as an ``.npz`` whatever else it is.

``numpy.load(path, allow_pickle=True)`` takes any file whose first bytes are
``PK\\x03\\x04`` or ``PK\\x05\\x06`` for an ``.npz``: Python's zipfile opens it (from the
directory at its end, bytes before the archive allowed), and each member that starts with
numpy's magic is read as an array, an object array's pickle run. A ``torch.save`` zip, a
``.pt2`` or a file read as a pickle may be such an ``.npz`` too. Their members with the
magic are found here (the stored ones by one vectorized pass over their local headers:
100,000 records cost milliseconds), and each object array's pickle is interpreted and
scanned, with a finding that names the polyglot. An ``archive`` reads its members itself.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.findings import DANGEROUS, NEEDS_TRUST, Finding
from ckpt_inspector.core.formats import _quota, _zip, _zip_audit, _zip_members, npy
from ckpt_inspector.core.io.source import BytesSource, Source, span
from ckpt_inspector.core.tree import Checkpoint

PREFIXES = (b"PK\x03\x04", b"PK\x05\x06")  # what numpy.load takes for a zip
MAX_MEMBER = 256 << 20  # an object array's bytes read to scan its pickle
MAX_SLOW = 10_000  # members read one by one (compressed, or listed by zipfile only)
VECTORIZE = 2_000  # stored members looked at with numpy at once, from this many


def applies(src: Source, ckpt: Checkpoint) -> bool:
    """Whether numpy.load would open this file as an .npz that was not read as one (a zip
    archive reads its members itself; a tar that starts like a zip is opened by numpy as
    the zip at its end)."""
    read_as_zip = ckpt.format == "archive" and ckpt.metadata.get("container") == "zip"
    return not read_as_zip and bytes(src.head(4)) in PREFIXES and \
        getattr(src, "transfer", None) is None  # (a URL: no request per member)


class _Skipped(list):
    """The names of members that could not be looked at (a finding, never silence)."""


def scan(ckpt: Checkpoint, src: Source, label: str = "", fmt: str | None = None) -> None:
    """``label``: where the file lies inside an archive (its findings and pickles say);
    ``fmt``: the file's format there (else the checkpoint's)."""
    raw = src.data
    fmt = fmt or ckpt.format
    skipped = _Skipped()
    members: list[tuple[str, Any]] = []
    if fmt in ("torch-zip", "torchscript", "pt2"):
        # torch's directory, which the zip audit checked against zipfile's
        with contextlib.suppress(_zip.ZipError):
            members = _by_directory(raw, _zip.directory_of(src), skipped)
    else:  # numpy reads with zipfile, whatever torch's reader would list
        members = _by_zipfile(raw, skipped)
    where = label.rstrip("/") or None
    if skipped:
        ckpt.findings.append(Finding(
            NEEDS_TRUST, "unscanned-member", f"numpy.load opens this file as an .npz, and "
            f"{len(skipped):,} of its members were not looked at here (e.g. {skipped[0]!r}): "
            "an array of objects among them would run its pickle", where))
    quota = _quota.current()  # one budget for the file and the archives it nests
    for name, read in members:
        try:
            data = read() if quota.arrays_left >= 0 else b""
            quota.arrays_left -= len(data)
            if quota.arrays_left < 0:
                raise _zip_members.MemberError(
                    f"more than {_quota.MAX_ARRAY_BYTES >> 20} MiB of arrays read for this "
                    "file")
            header = npy.parse_header(BytesSource(ckpt.path, data))
        except (CheckpointError, _zip_members.MemberError, OSError) as err:
            ckpt.findings.append(Finding(
                NEEDS_TRUST, "unscanned-member", f"numpy.load opens this file as an .npz, "
                f"and its member {name} starts like an array but could not be read: {err}",
                where))
            if quota.arrays_left < 0:
                break
            continue
        if not header.dtype.hasobject:
            continue  # numbers: numpy.load runs nothing
        ckpt.findings.append(Finding(
            DANGEROUS, "polyglot",
            f"numpy.load opens this {fmt} file as an .npz and unpickles its member "
            f"{name} (an array of Python objects): a pickle its own loader never reads",
            where))
        with contextlib.suppress(CheckpointError):  # (a broken pickle is recorded)
            npy.read_into(ckpt, BytesSource(ckpt.path, data), f"{label}(as npz) {name}/")


def _by_directory(raw: Any, directory: _zip.Directory, skipped: _Skipped
                  ) -> list[tuple[str, Any]]:
    """The members whose data starts with numpy's magic, as ``(name, read whole)``; each
    local header once (records may all point at one)."""
    seen: set[int] = set()
    entries = [e for e in directory.entries if e.file_size >= 10
               and not (e.header_offset in seen or seen.add(e.header_offset))]
    out: list[tuple[str, Any]] = []
    stored = [e for e in entries if e.compress_type == _zip.STORED]
    if len(stored) < VECTORIZE:
        for e in stored:
            try:
                start = _zip_members.data_span(raw, e, clamp=True)[0]
            except _zip_members.MemberError:
                continue
            if bytes(raw[start:start + 6]) == npy.MAGIC:
                out.append((e.filename, partial(_stored, raw, start, e)))
    else:  # (numpy is imported for the large ones only: info and scan start without it)
        import numpy as np

        buf = np.frombuffer(raw, dtype=np.uint8)
        n = len(buf)
        offs = np.fromiter((e.header_offset for e in stored), np.int64, len(stored))
        ok = (offs >= 0) & (offs + 30 <= n)
        o = np.where(ok, offs, 0)
        for k, byte in enumerate(b"PK\x03\x04"):  # a local header, as data_span checks
            ok &= buf[o + k] == byte
        names = buf[o + 26].astype(np.int64) | (buf[o + 27].astype(np.int64) << 8)
        extras = buf[o + 28].astype(np.int64) | (buf[o + 29].astype(np.int64) << 8)
        start = o + 30 + names + extras
        ok &= start + 6 <= n
        start = np.where(ok, start, 0)
        for k, byte in enumerate(npy.MAGIC):
            ok &= buf[start + k] == byte
        for i in np.flatnonzero(ok):
            e = stored[i]
            out.append((e.filename, partial(_stored, raw, int(start[i]), e)))
    deflated = [e for e in entries if e.compress_type == _zip.DEFLATED]
    skipped.extend(e.filename for e in deflated[MAX_SLOW:])
    for e in deflated[:MAX_SLOW]:
        if npy.sniff(_zip_members.read_prefix(raw, e, 6, clamp=True)):
            out.append((e.filename, partial(_inflated, raw, e)))
    # what zipfile unpacks (bzip2, LZMA) and torch's reader does not
    out += _with_magic(raw, [e.filename for e in entries
                             if e.compress_type not in (_zip.STORED, _zip.DEFLATED)], skipped)
    return out


def _with_magic(raw: Any, names: list[Any], skipped: _Skipped) -> list[tuple[str, Any]]:
    """Those of ``names`` (or zipfile's infos) whose first bytes, as zipfile unpacks them,
    are numpy's magic; those it cannot open are ``skipped``."""
    unpacker = _zip_audit.ZipfileReader(raw)
    out: list[tuple[str, Any]] = []
    skipped.extend(str(getattr(n, "filename", n)) for n in names[MAX_SLOW:])
    for name in names[:MAX_SLOW]:
        shown = str(getattr(name, "filename", name))
        try:
            head = unpacker.read(name, 6, whole=False)
        except _zip_members.MemberError:
            skipped.append(shown)
            continue
        if npy.sniff(head):
            out.append((shown, partial(unpacker.read, name, MAX_MEMBER)))
    return out


def _stored(raw: Any, start: int, e: Any) -> Any:
    return span(raw, start, min(start + min(e.compress_size, MAX_MEMBER), len(raw)))


def _inflated(raw: Any, e: Any) -> bytes:
    if e.file_size > MAX_MEMBER:
        raise _zip_members.MemberError(f"{e.file_size:,} bytes when inflated, more than the "
                                       f"{MAX_MEMBER >> 20} MiB read to scan it")
    start, end, _local = _zip_members.data_span(raw, e, clamp=True)
    return _zip_members.inflate(raw, start, end, e.file_size, e.filename, exact=False)[0]


def _by_zipfile(raw: Any, skipped: _Skipped) -> list[tuple[str, Any]]:
    """As zipfile, so numpy, lists them (each record by its info, so a name zipfile cuts at
    a NUL is still found)."""
    infos, _why = _zip_audit.zipfile_view(raw)
    return _with_magic(raw, [i for i in infos or [] if i.file_size >= 10], skipped)
