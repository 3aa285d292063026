"""Qt-free core: readers, the node tree, scanning and operations on checkpoints.

Nothing in this package imports Qt, and nothing imports torch at module level:
reading a torch-zip, legacy, pickle or safetensors file is plain Python.
"""

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.formats import detect_format
from ckpt_inspector.core.layouts import open_checkpoint
from ckpt_inspector.core.tree import Checkpoint, Node, StorageInfo, TensorInfo

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "Node",
    "StorageInfo",
    "TensorInfo",
    "detect_format",
    "open_checkpoint",
]
