"""The one model every format produces: a tree of :class:`Node` in a :class:`Checkpoint`.

A node is a container (``dict``, ``list``, ``tuple``, ``set``, ``object``,
``module``), a leaf value (``scalar``, ``str``, ``bytes``, ``none``, ``ref``)
or a ``tensor`` described by a :class:`TensorInfo`. A tensor's data is never
read to build the tree: :class:`StorageInfo` holds a lazy
:class:`~ckpt_inspector.core.tensors.DataSource` that later operations use.

Nodes know their parent and their row (:class:`~ckpt_inspector.core.keytree.TreeNode`), so
a Qt model can map an index to a node and back in O(1).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.keytree import TreeNode

if TYPE_CHECKING:
    from ckpt_inspector.core.findings import Finding
    from ckpt_inspector.core.pickle.vm import GlobalRef, PickleResult
    from ckpt_inspector.core.tensors import DataSource

CONTAINER_KINDS = frozenset({"dict", "list", "tuple", "set", "object", "module"})


@dataclass(eq=False, slots=True)
class StorageInfo:
    """One storage record: a run of ``numel`` elements of ``dtype`` saved at ``location``."""

    key: str
    dtype: str
    numel: int
    location: str
    source: DataSource | None = None
    problem: str | None = None

    @property
    def nbytes(self) -> int:
        return self.numel * (dtypes.itemsize(self.dtype) or 1)


# the dtype of a tensor something promised (an index, a split's count) whose file is
# missing or unreadable: its dtype and shape are unknown, and it counts no elements
UNKNOWN_DTYPE = "unknown"


@dataclass(eq=False, slots=True)
class TensorInfo:
    """What a tensor is, without its data."""

    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...] | None = None
    storage_offset: int = 0
    storage: StorageInfo | None = None
    device: str = "cpu"
    requires_grad: bool = False
    is_parameter: bool = False
    layout: str = "strided"
    quantization: dict[str, Any] | None = None
    subclass: str | None = None
    # component tensors of sparse/nested/quantized-per-channel tensors
    components: dict[str, TensorInfo] | None = None
    problem: str | None = None
    # the file that holds it, relative to what was opened, when a checkpoint is made of
    # several files (None for a single file)
    file: str | None = None
    # where a tensor saved in chunks lies: ``{"file", "offsets", "shape"}`` per chunk (a
    # DCP tensor sharded across ranks); None for a tensor in one piece
    pieces: list[dict[str, Any]] | None = None

    @property
    def shape_known(self) -> bool:
        return self.problem is None or self.dtype != UNKNOWN_DTYPE

    @property
    def numel(self) -> int:
        if self.problem is not None and self.dtype == UNKNOWN_DTYPE:
            return 0  # shape unknown: counts nothing (shape_known is False)
        if self.layout == "nested" and self.components:
            return self.components["buffer"].numel
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return dtypes.itemsize(self.dtype) or 0

    @property
    def nbytes(self) -> int:
        if self.layout != "strided" and self.components:
            return sum(c.nbytes for c in self.components.values())
        return self.numel * self.itemsize

    def is_contiguous(self) -> bool:
        if self.stride is None:
            return True
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride)):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True


# the type name of the node listing an archive's members ("zip archive", "tar archive")
ARCHIVE_SUFFIX = " archive"


@dataclass(eq=False, slots=True)
class Node(TreeNode):
    """One entry of the tree.

    ``key`` is the key in the parent (a ``str`` for dicts and attributes, an
    ``int`` for sequences, anything hashable for exotic dict keys, ``None``
    for the root). ``type_name`` is the Python type as the file names it
    (``collections.OrderedDict``, ``torchvision.models.resnet.ResNet``,
    ``int``). ``value`` holds a leaf's value; for a long sequence of scalars
    it holds the whole sequence and ``children`` stays empty.
    """

    kind: str
    key: Any = None
    type_name: str = ""
    value: Any = None
    tensor: TensorInfo | None = None
    role: str | None = None  # parameter | buffer | attribute | non-persistent buffer
    note: str | None = None
    # a saved state_dict's ``_metadata`` as load_state_dict reads it: module prefix ->
    # its class's ``_version`` (BatchNorm's 2 makes a missing num_batches_tracked an
    # error); None where the dict carried no ``_metadata``
    versions: dict[str, int] | None = None

    @property
    def is_container(self) -> bool:
        return self.kind in CONTAINER_KINDS

    def path(self) -> list[Any]:
        keys: list[Any] = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            keys.append(node.key)
            node = node.parent
        keys.reverse()
        return keys

    def in_state_dict(self) -> bool:
        """False for tensors that ``state_dict()`` would leave out."""
        return self.role not in ("non-persistent buffer", "attribute")


# Where a header-read tensor's TensorInfo is still to be made, the ``tensor`` slot of its
# node holds a list: [make data source, offset, length, dtype, shape, numel, key, file]
_TENSOR_SLOT = Node.__dict__["tensor"]
_FILE = 7
_lazy_lock = threading.Lock()

# True where the caller reads the verdict and not the tensors (``scan``): header formats
# then make tensor nodes whose TensorInfo is made when first read (:class:`LazyTensorNode`);
# elsewhere (a tree, info, the window) at once, which costs less than later
tensors_when_read: ContextVar[bool] = ContextVar("tensors_when_read", default=False)


class LazyTensorNode(Node):
    """A tensor node of a format whose header says everything (safetensors) made by the
    hundred thousand: its :class:`TensorInfo`, :class:`StorageInfo` and data source are
    made when ``tensor`` is first read, and the node then becomes a plain :class:`Node`.
    Made where :data:`tensors_when_read` is set: a verdict (``scan``) never reads them.
    Made as ``LazyTensorNode("tensor", key, "torch.Tensor", None, [make, offset, length,
    dtype, shape, numel, key, None])``: a tensor on the CPU, contiguous, a storage of its
    own of ``numel`` elements at ``make(offset, length)`` (``Source.ranges()``)."""

    __slots__ = ()

    @property  # type: ignore[override]
    def tensor(self) -> TensorInfo | None:
        value = _TENSOR_SLOT.__get__(self, Node)
        if type(value) is list:
            with _lazy_lock:  # two threads reading first make one TensorInfo
                # its siblings too, in one pass: what reads one tensor of a file reads them
                # all (a tree, info), and one pass costs what reading at once did
                parent = self.parent
                _make_all(parent.children if parent is not None else [self])
            value = _TENSOR_SLOT.__get__(self, Node)
        if type(self) is LazyTensorNode:
            self.__class__ = Node  # read as a plain slot from now on
        return value

    @tensor.setter
    def tensor(self, value: TensorInfo | None) -> None:
        _TENSOR_SLOT.__set__(self, value)


def _make_all(nodes: list[Node]) -> None:
    """The TensorInfo of every pending node of ``nodes`` (under ``_lazy_lock``); each then
    becomes a plain :class:`Node`."""
    get, put = _TENSOR_SLOT.__get__, _TENSOR_SLOT.__set__
    for node in nodes:
        if type(node) is not LazyTensorNode:
            continue
        value = get(node, Node)
        if type(value) is list:
            make, offset, length, dtype, shape, numel, key, file = value
            put(node, TensorInfo(dtype, tuple(shape), None, 0, StorageInfo(
                key, dtype, numel, "cpu", make(offset, length)), "cpu", False, False,
                "strided", None, None, None, None, file))
        node.__class__ = Node


def peek_tensor(node: Node) -> Any:
    """What the ``tensor`` slot holds without making a pending TensorInfo: a TensorInfo,
    None, or a pending one (see :func:`set_file`)."""
    return _TENSOR_SLOT.__get__(node, Node)


def set_file(peeked: Any, rel: str) -> None:
    """Name the file of a tensor as :func:`peek_tensor` gave it."""
    if type(peeked) is list:
        peeked[_FILE] = rel
    else:
        peeked.file = rel


def key_of(path: list[Any]) -> str:
    return ".".join(str(k) for k in path)


@dataclass(eq=False)
class PickleRecord:
    """One pickle stream the reader interpreted, and what it would have done."""

    member: str  # archive member name, or "" for the file itself
    result: PickleResult  # globals, calls and anomalies (partial when ``error`` is set)
    trailing: int = 0  # bytes after STOP that no format explains
    error: str | None = None
    # the error is a bound of this reader (time, opcodes, sizes): a loader reads on past it
    limit: bool = False
    executed: bool = True  # False: found by sniffing; torch itself never unpickles it
    file: str | None = None  # the file of a checkpoint made of several files that holds it
    # classes the stream's own loader expects and that are plain records there (DCP's
    # .metadata): not a reason for needs-trust in this stream only
    known_classes: frozenset[str] = frozenset()


@dataclass(eq=False)
class Checkpoint:
    """Everything a reader learned about one file."""

    path: str
    format: str  # torch-zip | torch-legacy | torchscript | pickle | safetensors | onnx
    root: Node
    file_size: int = 0
    pickles: list[PickleRecord] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)  # structural findings of the reader
    warnings: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    runs_code: str | None = None  # why loading this file runs code besides imports (TorchScript)
    # checkpoints embedded as bytes (torch.storage._load_from_bytes), read as torch.load
    # reads them: id of the call -> the inert value; how deep such reading goes now
    embedded: dict[int, Any] = field(default_factory=dict, repr=False)
    embed_depth: int = 0
    # a checkpoint made of several files (a layout): each file as ``{"path" (relative to
    # what was opened), "size", "format", ...}``; empty for a single file
    files: list[dict[str, Any]] = field(default_factory=list)
    # files a loader of such a checkpoint torch.loads too (a Trainer's optimizer.pt), read
    # for the verdict and not shown: ``{"path", "size", "format"[, "problem"]}``
    verdict_files: list[dict[str, Any]] = field(default_factory=list)

    def tensors(self) -> Iterator[tuple[list[Any], Node]]:
        """``(path, node)`` for every tensor node, in tree order."""
        for node in self.root.walk():
            if node.kind == "tensor":
                yield node.path(), node

    def globals(self) -> Iterator[GlobalRef]:
        for record in self.pickles:
            yield from record.result.globals

    def global_names(self) -> list[str]:
        return sorted({g.full_name for g in self.globals()})

    def take_scan(self, part: Checkpoint, file_of: Callable[[str | None], str | None],
                  warn: Callable[[str], str] = lambda w: w) -> None:
        """``part``'s pickles, findings, warnings and code, for this one's verdict: each
        names its file as ``file_of`` its own says (``part`` read from another file)."""
        from ckpt_inspector.core.findings import NEEDS_TRUST, Finding

        for record in part.pickles:
            record.file = file_of(record.file)
        self.pickles.extend(part.pickles)
        for finding in part.findings:
            finding.file = file_of(finding.file)
        self.findings.extend(part.findings)
        if part.runs_code:
            self.findings.append(Finding(NEEDS_TRUST, "code", part.runs_code,
                                         file=file_of(None)))
        self.warnings.extend(warn(w) for w in part.warnings)
