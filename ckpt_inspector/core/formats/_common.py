"""Pieces shared by the pickle-based readers (torch zip, legacy, bare pickle)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ckpt_inspector.core.errors import CheckpointError, PickleError
from ckpt_inspector.core.findings import DANGEROUS, Finding
from ckpt_inspector.core.io.source import Source
from ckpt_inspector.core.pickle import vm as pickle_vm
from ckpt_inspector.core.pickle.arguments import literal_bytes
from ckpt_inspector.core.pickle.rebuild import TreeBuilder
from ckpt_inspector.core.pickle.values import PersistentLoad, PickleResult
from ckpt_inspector.core.tree import Checkpoint, Node, PickleRecord


def new_checkpoint(src: Source, fmt: str) -> Checkpoint:
    """The checkpoint a reader fills in (its ``root`` is set once the tree is built)."""
    return Checkpoint(src.name, fmt, None, file_size=len(src))  # type: ignore[arg-type]


def run_pickle(
    ckpt: Checkpoint,
    data: Any,
    member: str,
    start: int = 0,
    persistent_load: PersistentLoad | None = None,
    *,
    expect_end: bool = True,
    executed: bool = True,
    end_hint: int | None = None,
    after_build: pickle_vm.AfterBuild | None = None,
    python: bool = False,
) -> PickleResult:
    """Interpret one pickle and record it on ``ckpt``.

    With ``expect_end``, bytes after STOP are recorded as trailing data (the
    scanner flags them); ``end_hint`` is where the stream should end when the data runs
    on past it (for the progress of a long read). On a broken stream the partial record
    is kept and a :class:`CheckpointError` carrying ``ckpt`` is raised.
    """
    try:
        result = pickle_vm.load(data, start, persistent_load=persistent_load,
                                end_hint=end_hint, after_build=after_build, python=python)
    except PickleError as err:
        partial = err.result or PickleResult(None, start, start, 0)
        _tag(partial, member)
        ckpt.pickles.append(PickleRecord(member, partial, error=str(err), limit=err.limit,
                                         executed=executed))
        read_embedded(ckpt, partial, member)
        where = f" in {member}" if member else ""
        raise _with_partial(CheckpointError(f"broken pickle{where}: {err}"), ckpt) from None
    _tag(result, member)
    record = PickleRecord(member, result, executed=executed)
    if expect_end:
        record.trailing = len(data) - result.end
    ckpt.pickles.append(record)
    read_embedded(ckpt, result, member)
    return result


EMBED_DEPTH = 4
_LOAD_FROM_BYTES = "torch.storage._load_from_bytes"

# ``(ckpt, bytes, label) -> value``: reads a checkpoint embedded as bytes. That goes back
# through the readers, which build on this module, so the registry (formats/__init__)
# sets it rather than this module importing them.
embedded_loader: Callable[[Checkpoint, Any, str], Any] | None = None


def read_embedded(ckpt: Checkpoint, result: PickleResult, member: str) -> None:
    """Every ``torch.storage._load_from_bytes(b)`` the stream calls is ``torch.load`` of
    ``b`` with ``weights_only=False``: its pickles are read (and scanned) as run, whether
    or not the value ends up in the tree (a result popped off the stack, used as a key).
    Bytes computed at load time cannot be read: the scan calls that dangerous."""
    calls = [c for c in result.calls if c.func_name == _LOAD_FROM_BYTES and c.args
             and id(c) not in ckpt.embedded]
    if not calls:
        return
    load_embedded = embedded_loader
    assert load_embedded is not None, "formats/__init__ registers the embedded loader"
    for call in calls:
        raw = literal_bytes(call.args[0])
        if raw is None:
            continue
        if ckpt.embed_depth >= EMBED_DEPTH:
            ckpt.findings.append(Finding(
                DANGEROUS, "nested-too-deep",
                f"checkpoints embedded in embedded checkpoints more than {EMBED_DEPTH} levels "
                "deep: torch.load reads them all, ckpt-inspector stops here", member))
            return
        ckpt.embed_depth += 1
        try:
            ckpt.embedded[id(call)] = load_embedded(ckpt, raw, f"{member}/" if member else "")
        finally:
            ckpt.embed_depth -= 1


def _tag(result: PickleResult, member: str) -> None:
    for g in result.globals:
        g.member = member


def _with_partial(err: CheckpointError, ckpt: Checkpoint) -> CheckpointError:
    if ckpt.root is None:
        ckpt.root = Node("truncated", note="the file could not be read")
    err.partial = ckpt
    return err


def build_tree(ckpt: Checkpoint, value: Any, **options: Any) -> Node:
    """The node tree of an inert pickle value. A failure keeps the pickles already
    recorded on ``ckpt`` (as ``err.partial``), so a scan still reports what they do."""
    builder = TreeBuilder(embedded=ckpt.embedded, **options)
    try:
        root = builder.build(value)
    except Exception as err:  # a reader bug on odd input must not hide the findings
        raise fail(ckpt, f"could not interpret the file's objects "
                         f"({type(err).__name__}: {err})") from err
    ckpt.warnings.extend(builder.warnings)
    return root


def fail(ckpt: Checkpoint, message: str) -> CheckpointError:
    """A CheckpointError that keeps what was read so far, for the scanner."""
    return _with_partial(CheckpointError(message), ckpt)
