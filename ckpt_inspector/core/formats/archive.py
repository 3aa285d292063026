"""Archives that hold checkpoints: a zip or tar of model files, as people send them.

``torch.load`` cannot open such a file, but the checkpoints inside can be
extracted and loaded, so each member that is a checkpoint is read in place
(nothing is extracted to disk) and its findings are reported under its name.
Archives nest up to :data:`MAX_DEPTH` levels. Compressed wrappers this reader
does not unpack (7z, gzip, xz, ...) are refused with the reason, never called
safe.
"""

from __future__ import annotations

import tarfile
import zipfile

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.formats import _zip
from ckpt_inspector.core.formats._common import Blob, fail
from ckpt_inspector.core.scan import NEEDS_TRUST, Finding
from ckpt_inspector.core.tree import Checkpoint, Node

MAX_DEPTH = 3
MAX_MEMBER_BYTES = 1 << 30

WRAPPERS = (
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"Rar!\x1a\x07", "rar"),
)


def wrapper_kind(head: bytes) -> str | None:
    for magic, kind in WRAPPERS:
        if head.startswith(magic):
            return kind
    return None


def refuse_wrapper(kind: str) -> CheckpointError:
    return CheckpointError(f"a {kind}-compressed file: ckpt-inspector does not unpack {kind}; "
                           "extract it and open the files inside")


def read(path: str, kind: str) -> Checkpoint:
    blob = Blob(path)
    ckpt = Checkpoint(path, "archive", None, file_size=len(blob))  # type: ignore[arg-type]
    ckpt.metadata["container"] = kind
    ckpt.root = read_into(ckpt, blob, "", kind, 0)
    return ckpt


def read_into(ckpt: Checkpoint, blob: Blob, label: str, kind: str, depth: int) -> Node:
    root = Node("dict", None, f"{kind} archive")
    for name, size, fetch in _members(ckpt, blob, kind):
        where = label + name
        if size > MAX_MEMBER_BYTES:
            ckpt.findings.append(Finding(NEEDS_TRUST, "unscanned-member",
                                         f"{name} ({size:,} bytes) is too large to scan inside "
                                         "an archive: extract it and open it", where))
            root.add(Node("value", name, "member", f"<not scanned: {size:,} bytes>"))
            continue
        try:
            data = fetch()
        except (CheckpointError, _zip.MemberError, OSError, tarfile.TarError) as err:
            ckpt.findings.append(Finding(NEEDS_TRUST, "unscanned-member",
                                         f"{name} could not be read: {err}", where))
            continue
        root.add(_member_node(ckpt, name, data, f"{where}/", depth))
    return root


def _members(ckpt: Checkpoint, blob: Blob, kind: str):
    if kind == "zip":
        try:
            zf = zipfile.ZipFile(blob.source)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError) as err:
            raise fail(ckpt, f"damaged zip archive: {err}") from None
        with zf:
            infos = zf.infolist()
        _zip.audit(ckpt, blob.data, infos, "")
        for info in infos:
            if info.filename and not info.filename.endswith("/"):
                yield info.filename, info.file_size, (
                    lambda i=info: _read_zip_member(ckpt, blob, i))
    else:
        from ckpt_inspector.core.formats.torch_tar import members_of

        for name, m in members_of(ckpt, blob).items():
            yield name, m.size, (lambda m=m: bytes(blob.data[m.offset_data:
                                                             m.offset_data + m.size]))


def _read_zip_member(ckpt: Checkpoint, blob: Blob, info: zipfile.ZipInfo) -> bytes:
    data, _crc_ok, local = _zip.read_checked(blob.data, info, MAX_MEMBER_BYTES)
    if local != info.filename:
        ckpt.findings.append(_zip.name_mismatch(info, local, info.filename))
    return data


def _member_node(ckpt: Checkpoint, name: str, data: bytes, label: str, depth: int) -> Node:
    """The tree of one member: a checkpoint's own tree, or a note of what it is."""
    from ckpt_inspector.core.formats import (
        pickle_file,
        safetensors_fmt,
        torch_legacy,
        torch_tar,
        torch_zip,
    )

    head = data[:512]
    nested = Blob(f"{ckpt.path}!{label}", data)
    named = _pickle_like_name(name)
    try:
        if torch_zip.sniff(head) or torch_tar.sniff(head):
            kind = "zip" if torch_zip.sniff(head) else "tar"
            if kind == "zip" and _is_torch_zip(data):
                node = torch_zip.read_into(ckpt, nested, label)
            elif kind == "tar" and torch_tar.is_torch_tar(torch_tar.members_of(ckpt, nested)):
                node = torch_tar.read_into(ckpt, nested, label)
            elif depth + 1 >= MAX_DEPTH:
                ckpt.findings.append(Finding(NEEDS_TRUST, "unscanned-member",
                                             f"{name}: archives nested deeper than {MAX_DEPTH} "
                                             "levels are not opened", label.rstrip("/")))
                node = Node("value", None, "member", "<archive not opened: nested too deep>")
            else:
                node = read_into(ckpt, nested, label, kind, depth + 1)
        elif torch_legacy.sniff(head):
            node = torch_legacy.read_into(ckpt, nested, label)
        elif wrapper_kind(head):
            ckpt.findings.append(Finding(NEEDS_TRUST, "unscanned-member",
                                         f"{name} is {wrapper_kind(head)}-compressed and was "
                                         "not unpacked", label.rstrip("/")))
            node = Node("value", None, "member", f"<{wrapper_kind(head)} data, not unpacked>")
        elif safetensors_fmt.sniff(head):
            node = Node("value", None, "member", "<safetensors file: holds no code>")
        elif (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")) or (
                named and pickle_file.sniff(head)):
            # a pickle whatever its name; one not named like a checkpoint is not something
            # a loader would run, so only what it imports counts
            node = pickle_file.read_into(ckpt, nested, label, executed=named)
        else:
            node = Node("bytes", None, "member", b"", note=f"{len(data):,} bytes, not a checkpoint")
    except CheckpointError as err:
        ckpt.findings.append(Finding(NEEDS_TRUST, "unreadable-member",
                                     f"{name} could not be read: {err}", label.rstrip("/")))
        node = Node("value", None, "member", f"<unreadable: {err}>")
    node.key = name
    return node


def _is_torch_zip(data: bytes) -> bool:
    import io

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return any(n.endswith("/data.pkl") and n.count("/") == 1 for n in zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError):
        return True  # let the torch reader report what is wrong with it


def _pickle_like_name(name: str) -> bool:
    """Bare pickles are recognised by name inside archives (their first byte says little)."""
    return name.lower().endswith((".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".p",
                                  ".joblib", ".dat", ".data"))


def classify_zip(path: str) -> str:
    """``torch-zip`` when the zip has a ``<root>/data.pkl``, ``pt2`` for torch.export
    archives, else ``archive``."""
    from ckpt_inspector.core.formats.pt2 import is_pt2

    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError):
        return "torch-zip"  # the torch reader reports the damage
    if any(n.endswith("/data.pkl") and n.count("/") == 1 for n in names):
        return "torch-zip"
    if is_pt2(names):
        return "pt2"
    return "archive"


def classify_tar(path: str) -> str:
    from ckpt_inspector.core.formats.torch_tar import is_torch_tar, members_of

    try:
        members = members_of(Checkpoint(path, "archive", Node("dict")), Blob(path))
    except CheckpointError:
        return "torch-tar"
    return "torch-tar" if is_torch_tar(members) else "archive-tar"
