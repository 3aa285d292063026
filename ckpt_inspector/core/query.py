"""The filter syntax of the key tree.

Terms separated by spaces must all match (AND):

- ``conv``            substring of the key, case-insensitive
- ``re:^layer[12]\\.`` or ``/^layer[12]\\./``   regular expression on the key; ``^`` anchors at
                      the start of any key segment, so ``^layer4`` finds
                      ``model_state_dict.layer4.0.conv1.weight`` too
- ``shape:768x768``   exact shape; ``*`` matches one dimension of any size (``shape:*x768``),
                      ``**`` (or ``…``, ``...``) any number of dimensions, none included
                      (``shape:**x3x3``: every 3×3 kernel, ``shape:64x**``: a first dimension
                      of 64), ``shape:[]`` a scalar
- ``dtype:bf16``      dtype by name or alias (bf16, fp16, half, fp32, float, fp8, int8, bool, ...);
                      a prefix matches a family (``dtype:float8``)
- ``device:cuda``     saved device (prefix: ``cuda`` matches ``cuda:0``)
- ``role:buffer``     parameter | buffer | attribute
- ``file:-00002-``    the file that holds the tensor (a checkpoint made of several files),
                      substring, case-insensitive
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ckpt_inspector.core.display import DisplayNode

DTYPE_ALIASES = {
    "bf16": "bfloat16", "fp16": "float16", "half": "float16", "f16": "float16",
    "fp32": "float32", "float": "float32", "f32": "float32", "fp64": "float64",
    "double": "float64", "f64": "float64", "fp8": "float8", "long": "int64", "int": "int32",
    "short": "int16", "byte": "uint8", "char": "int8", "cfloat": "complex64",
}


class QueryError(ValueError):
    """The filter text is not valid (shown to the user as is)."""


@dataclass
class Query:
    text: str
    tests: list[Callable[[DisplayNode], bool]]

    def __call__(self, node: DisplayNode) -> bool:
        return all(test(node) for test in self.tests)

    @property
    def empty(self) -> bool:
        return not self.tests


ANY_DIMS = ("**", "…", "...")  # any number of dimensions, none included


def _shape_test(spec: str) -> Callable[[DisplayNode], bool]:
    spec = spec.strip().strip("[]()")
    dims = [d for d in re.split(r"[x×,\s]+", spec) if d] if spec else []
    pattern: list[int | str | None] = []  # a size, None for any size, "**" for any dims
    for d in dims:
        if d in ("*", "?"):
            pattern.append(None)
        elif d in ANY_DIMS:
            if not pattern or pattern[-1] != "**":  # "**x**" is one run
                pattern.append("**")
        elif d.isdigit():
            pattern.append(int(d))
        else:
            raise QueryError(f"shape: expects sizes like 768x768, *x768 or **x3x3, not {d!r}")

    def test(n: DisplayNode) -> bool:
        return n.is_tensor and shape_matches(pattern, tuple(n.node.tensor.shape))
    return test


def shape_matches(pattern: list[int | str | None], shape: tuple[int, ...]) -> bool:
    """Whether ``shape`` fits ``pattern``: sizes, ``None`` (one dimension of any size) and
    ``"**"`` (any number of dimensions), as a glob matches a path."""
    if "**" not in pattern:
        return len(shape) == len(pattern) and all(
            p is None or p == s for p, s in zip(pattern, shape))
    # which prefixes of the shape the pattern so far can match (a shape has few dimensions)
    reach = [True] + [False] * len(shape)
    for p in pattern:
        if p == "**":
            for i in range(1, len(reach)):
                reach[i] = reach[i] or reach[i - 1]
        else:
            reach = [False] + [reach[i] and (p is None or p == shape[i])
                               for i in range(len(shape))]
    return reach[-1]


def _dtype_test(spec: str) -> Callable[[DisplayNode], bool]:
    want = DTYPE_ALIASES.get(spec.lower(), spec.lower())

    def test(n: DisplayNode) -> bool:
        return n.is_tensor and n.node.tensor.dtype.startswith(want)
    return test


def _regex_test(pattern: str) -> Callable[[DisplayNode], bool]:
    try:
        rx = re.compile(pattern, re.IGNORECASE)
    except re.error as err:
        raise QueryError(f"invalid regular expression: {err}") from None

    def test(n: DisplayNode) -> bool:
        key = n.key
        if rx.search(key):
            return True
        # a pattern anchored with ^ may start at any segment of a nested key
        start = key.find(".")
        while start >= 0:
            if rx.search(key[start + 1:]):  # ^ only anchors at a string's real start
                return True
            start = key.find(".", start + 1)
        return False
    return test


def parse(text: str) -> Query:
    """Parse filter text; raises QueryError with a message for the user."""
    tests: list[Callable[[DisplayNode], bool]] = []
    for term in text.split():
        field, sep, arg = term.partition(":")
        field = field.lower() if sep else ""
        if term.startswith("/") and term.endswith("/") and len(term) > 2:
            tests.append(_regex_test(term[1:-1]))
        elif field in ("re", "regex"):
            tests.append(_regex_test(arg))
        elif field == "shape":
            tests.append(_shape_test(arg))
        elif field == "dtype":
            tests.append(_dtype_test(arg))
        elif field == "device":
            dev = arg.lower()
            tests.append(lambda n, dev=dev: n.is_tensor and n.node.tensor.device.startswith(dev))
        elif field == "role":
            role = arg.lower()
            tests.append(lambda n, role=role: n.node is not None and (n.node.role or "")
                         .startswith(role))
        elif field == "file":
            part = arg.lower()
            tests.append(lambda n, part=part: n.is_tensor and part in (n.node.tensor.file or "")
                         .lower())
        else:
            needle = term.lower()
            tests.append(lambda n, needle=needle: needle in n.key.lower())
    return Query(text, tests)


def matching(top: DisplayNode, query: Query) -> list[DisplayNode]:
    """The display nodes that match, in tree order."""
    return [n for n in top.walk() if n is not top and query(n)]


def visible_ids(matches: list[DisplayNode]) -> set[int]:
    """What a filtered tree shows: the matches, everything above them (so a match is
    reachable) and everything below them (a matching module shows its tensors)."""
    visible: set[int] = set()
    for node in matches:
        if id(node) in visible:
            continue
        for below in node.walk():
            visible.add(id(below))
        parent = node.parent
        while parent is not None and id(parent) not in visible:
            visible.add(id(parent))
            parent = parent.parent
    return visible
