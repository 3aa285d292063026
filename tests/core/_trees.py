"""Small checkpoint trees built by hand (no torch, no file) for the Qt-free tests."""

from __future__ import annotations

from typing import Any

from ckpt_inspector.core.tree import Node, TensorInfo


def tensor(key: Any, shape: tuple[int, ...] = (2, 3), dtype: str = "float32",
           **extra: Any) -> Node:
    role = extra.pop("role", None)
    return Node("tensor", key, "torch.Tensor", tensor=TensorInfo(dtype, shape, **extra),
                role=role)


def state_dict(*children: Node, kind: str = "dict") -> Node:
    root = Node(kind, None, "collections.OrderedDict")
    for child in children:
        root.add(child)
    return root
