"""Format detection and the one entry point every caller uses: :func:`open_checkpoint`."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.formats import _npz_view, _quota
from ckpt_inspector.core.io.opening import open_source
from ckpt_inspector.core.io.source import BytesSource, Source
from ckpt_inspector.core.pickle import vm as pickle_vm
from ckpt_inspector.core.tree import Checkpoint, Node

FORMATS = ("torch-zip", "torch-legacy", "torchscript", "pickle", "safetensors", "onnx",
           "pt2", "archive", "gguf", "npy")


@dataclass(frozen=True)
class Reader:
    """One way to read a file: ``sniff(source)`` says whether it applies (from the head
    and listings cached on the source), ``read(source)`` reads it."""

    name: str
    sniff: Callable[[Source], bool]
    read: Callable[[Source], Checkpoint]


def _readers() -> tuple[Reader, ...]:
    from ckpt_inspector.core.formats import (
        archive,
        gguf_fmt,
        npy,
        onnx_fmt,
        pickle_file,
        pt2,
        safetensors_fmt,
        torch_legacy,
        torch_tar,
        torch_zip,
        torchscript,
    )

    def zip_of(kind: str) -> Callable[[Source], bool]:
        return lambda src: torch_zip.sniff(src.head()) and archive.zip_kind(src) == kind

    def tar_of(kind: str) -> Callable[[Source], bool]:
        return lambda src: torch_tar.sniff(src.head()) and archive.tar_kind(src) == kind

    def onnx(src: Source) -> bool:
        head = src.head()
        return onnx_fmt.sniff(head) or (src.name.lower().endswith(".onnx")
                                        and head[:1] == b"\x08")

    # in the order torch.load decides: a zip (local header at byte 0), a tar, then the rest;
    # a compressed wrapper ("BZh" also starts a pickle) before the formats sniffed by magic
    def script(src: Source) -> bool:
        return zip_of("torch-zip")(src) and torchscript.sniff(src)

    return (
        # torch.jit.save's archive is torch.save's plus code: one reader reads both and
        # names the format from what the archive holds
        Reader(torchscript.NAME, script, torch_zip.read),
        Reader(torch_zip.NAME, zip_of("torch-zip"), torch_zip.read),
        Reader(pt2.NAME, zip_of("pt2"), pt2.read),
        Reader("archive", zip_of("archive"), lambda src: archive.read(src, "zip")),
        # "\x93NUMPY": numpy.load reads it as an array whatever else it is; it is never a
        # pickle to torch.load (STACK_GLOBAL first), and a tar as well is a polyglot
        Reader(npy.NAME, lambda src: npy.sniff(src.head()), npy.read),
        Reader(torch_tar.NAME, tar_of("torch-tar"), torch_tar.read),  # reported as torch-legacy
        Reader("archive-tar", tar_of("archive-tar"), lambda src: archive.read(src, "tar")),
        Reader("compressed", lambda src: archive.sniff_wrapped(src.head()),
               archive.read_wrapped),
        Reader(torch_legacy.NAME, lambda src: torch_legacy.sniff(src.head()),
               torch_legacy.read),
        Reader(safetensors_fmt.NAME, lambda src: safetensors_fmt.sniff(src.head()),
               safetensors_fmt.read),
        Reader(onnx_fmt.NAME, onnx, onnx_fmt.read),
        Reader(gguf_fmt.NAME, lambda src: gguf_fmt.sniff(src.head()), gguf_fmt.read),
        Reader(pickle_file.NAME, lambda src: pickle_file.sniff(src.head()), pickle_file.read),
        # numpy.load opens any file starting like a zip with zipfile (an .npz): one torch's
        # reader refuses (bytes before the archive) is read as zipfile reads it
        Reader("archive-zipfile", lambda src: bytes(src.head(4)) in _npz_view.PREFIXES,
               lambda src: archive.read(src, "zip")),
    )


READERS: tuple[Reader, ...] = ()


def _register_embedded_loader() -> None:
    from ckpt_inspector.core.formats import _common, _joblib, pickle_file

    _common.embedded_loader = pickle_file.load_embedded
    _joblib.file_reader = lambda path: open_checkpoint(path)  # defined below


_register_embedded_loader()


def readers() -> tuple[Reader, ...]:
    """The registry, in the order detection tries it (built on first use: the readers
    import what they need only when a file is opened)."""
    global READERS
    if not READERS:
        READERS = _readers()
    return READERS


def reader_for(src: Source) -> Reader:
    """The first reader whose sniff accepts ``src``. Raises CheckpointError if none does."""
    if not src.head(1):
        raise CheckpointError("empty file")
    for reader in readers():
        if reader.sniff(src):
            return reader
    raise CheckpointError("not a checkpoint: the format is not recognised")


def detect_format(path: str | os.PathLike[str] | Source) -> str:
    """The name of the reader for a file (``torch-tar`` is the pre-0.4 legacy format,
    reported as ``torch-legacy``). Raises CheckpointError if none fits."""
    return reader_for(path if isinstance(path, Source) else open_source(path)).name


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read the structure of a checkpoint file. Never runs code from the file.

    Raises CheckpointError (one line for the user, without the path) when the
    file cannot be read; ``err.partial`` then holds what was read so far.
    """
    path = os.fspath(path)
    try:
        if os.path.isdir(path):
            raise CheckpointError("is a folder, not a file")
        # one time limit for every pickle the file holds, and one count of those besides
        # its checkpoint's own
        with pickle_vm.deadline(), _quota.per_file():
            src = open_source(path)
            try:
                reader = reader_for(src)
                ckpt = reader.read(src)
            except CheckpointError as err:
                # unreadable as what its first bytes say, yet maybe an archive to torch
                partial = err.partial or Checkpoint(path, "unknown", Node(
                    "truncated", note="the file could not be read"))
                if not _is_zip(partial) and _zip_view(partial, src):
                    err.partial = partial
                raise
            if not _is_zip(ckpt):
                _zip_view(ckpt, src)
            else:
                _tar_view(ckpt, src)
            if ckpt.format in NOT_PICKLES or reader.name in TARS:
                _pickle_view(ckpt, src)  # pickle.load's reading of any file
            if _npz_view.applies(src, ckpt):  # numpy.load's reading of any PK file
                _npz_view.scan(ckpt, src)
            transfer = getattr(src, "transfer", None)
            if transfer is not None:  # a remote file: what its structure took to read
                ckpt.metadata["remote"] = transfer.to_json()
            return ckpt
    except FileNotFoundError:
        raise CheckpointError("no such file") from None
    except PermissionError:
        raise CheckpointError("permission denied") from None
    except IsADirectoryError:
        raise CheckpointError("is a folder, not a file") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read the file: {err}") from None


ZIP_FORMATS = ("torch-zip", "torchscript", "pt2")
# formats read otherwise than as a pickle, whose first bytes may still start one (a
# tar's are its first member's name); a zip's ("PK": PERSID) make pickle.load fail at once
NOT_PICKLES = ("safetensors", "gguf", "onnx")
TARS = ("torch-tar", "archive-tar")


def _pickle_view(ckpt: Checkpoint, src: Source) -> None:
    """A file read as another format whose first bytes are also a pickle that does
    something (a safetensors header whose length reads as a STRING opcode, a tar whose
    first member's name is a pickle, and so on):
    pickle.load, joblib.load and torch.load run that pickle. Such a polyglot is dangerous
    and the pickle is scanned too."""
    from ckpt_inspector.core.findings import DANGEROUS, NEEDS_TRUST, Finding
    from ckpt_inspector.core.formats import pickle_file

    size = len(src)
    if src.head(1)[0] not in pickle_file.OPCODES:
        return
    # the whole of a local file (a STRING may run past any head); of a remote one, what was
    # fetched already (a request more for every such file is not worth it: said in README)
    fetched = None
    if getattr(src, "transfer", None) is not None:  # (its first block may be evicted)
        fetched = max(src.fetched_start(), bytes(src.head()), key=len)
    if fetched is not None:
        src = BytesSource(src.name, fetched)
    try:
        other = pickle_file.read(src)
    except CheckpointError as err:
        other = err.partial
    if other is None or not any(pickle_file.acted(r.result) for r in other.pickles):
        if fetched is not None and len(fetched) < size and pickle_file.runs_past(fetched):
            ckpt.findings.append(Finding(
                NEEDS_TRUST, "polyglot-unread",
                f"the {ckpt.format} file's first {len(fetched):,} bytes are also the start "
                "of a pickle that goes on past them: what pickle.load, joblib.load and "
                "torch.load would run is in the rest of the file, which was not fetched "
                "(download it and scan it here to know)"))
        return  # a stream that breaks before it does anything: nothing runs
    ckpt.findings.append(Finding(
        DANGEROUS, "polyglot", f"the {ckpt.format} file is also a pickle that pickle.load, "
        "joblib.load and torch.load run: it imports or calls something"))
    ckpt.take_scan(other, lambda _f: "(as a pickle)")


def _tar_view(ckpt: Checkpoint, src: Source) -> None:
    """A zip (read so: its first bytes are a local header) whose first 512 bytes are also
    a tar header: tar, tarfile and shutil.unpack_archive extract the tar's members, which
    a name starting "PK\3\4" and a zip appended hide from a reader of the zip alone.
    Such a polyglot is dangerous and its tar members are scanned too."""
    from ckpt_inspector.core.findings import DANGEROUS, Finding
    from ckpt_inspector.core.formats import _tar_listing, archive

    if not _tar_listing.is_tar(src.head()):
        return
    try:
        view = archive.read(src, "tar")
    except CheckpointError as err:
        view = err.partial
    if view is None or not view.root.children:
        return
    ckpt.findings.append(Finding(
        DANGEROUS, "polyglot",
        "the zip archive is also a tar archive (tar, tarfile and shutil.unpack_archive "
        "extract it from its first bytes): extracted as a tar it yields other files than "
        "the zip does"))
    ckpt.take_scan(view, lambda f: f"(as tar) {f}" if f else "(as tar)")
    node = view.root
    node.key = "(as tar)"
    ckpt.root.add(node)


def _is_zip(ckpt: Checkpoint) -> bool:
    return ckpt.format in ZIP_FORMATS or (ckpt.format == "archive"
                                          and ckpt.metadata.get("container") == "zip")


def _zip_view(ckpt: Checkpoint, src: Source) -> bool:
    """A file read as another format may also be a zip to ``torch.jit.load`` and
    ``torch.export.load``: torch's zip reader (miniz) finds the archive from its directory
    at the *end* of the file, whatever the first bytes say. Such a polyglot is dangerous
    and what its archive holds is scanned too."""
    from ckpt_inspector.core.findings import DANGEROUS, Finding
    from ckpt_inspector.core.formats import _zip, _zip_audit, archive, pt2, torch_zip

    try:
        _zip.find_end_record(src.data, len(src.data))
        try:  # miniz, as torch.jit.load and torch.export.load read it
            kind = archive._kind_of(_zip.directory_of(src))
        except _zip.ZipLimit as err:  # an archive those loaders may open, not listed here
            ckpt.findings.append(Finding(
                DANGEROUS, "polyglot",
                f"the file also ends in a zip archive that torch.jit.load and "
                f"torch.export.load may open from its directory, whatever its first bytes "
                f"say; it is not read here ({err}), so what it holds is not known"))
            return True
        except _zip.ZipError:
            # torch.export.load's fallback for the older layout reads with zipfile, which
            # allows for bytes before the archive; torch.jit.load has no such fallback
            infos, _why = _zip_audit.zipfile_view(src.data)
            kind = archive._kind_of_names([i.orig_filename for i in infos or []])
            if kind != "pt2":
                return False
    except Exception:  # no archive torch's readers would open either
        return False
    if kind not in ("torch-zip", "pt2"):
        return False
    loader = "torch.export.load" if kind == "pt2" else "torch.jit.load / torch.export.load"
    try:
        view = (pt2.read if kind == "pt2" else torch_zip.read)(src)
    except CheckpointError as err:
        view = err.partial
    ckpt.findings.append(Finding(
        DANGEROUS, "polyglot",
        f"the file is also a {kind} archive that {loader} opens from the directory at its "
        f"end, whatever its first bytes say: it reads as {ckpt.format} to one loader and as "
        "an archive to another"))
    if view is not None:
        for record in view.pickles:
            record.member = f"(as {kind}) {record.member}"
        ckpt.pickles.extend(view.pickles)
        ckpt.findings.extend(view.findings)
        if view.runs_code:
            ckpt.runs_code = f"{ckpt.runs_code}; {view.runs_code}" if ckpt.runs_code \
                else view.runs_code
    return True
