"""What an export's output is called: the extensions each target is known by, the name a
new target gives an output the user named, and the warning for a name that says another
format (tools, file managers and ckpt-inspector's own "Open With" go by the name)."""

from __future__ import annotations

import os

# each target's extensions, the usual one first ("" : the output is a folder)
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "state_dict": (".pt", ".pth", ".bin", ".ckpt"),
    "safetensors": (".safetensors",),
    "hf-sharded": ("",),
    "torchscript": (".pt", ".pth", ".ptl"),
    "onnx": (".onnx",),
    "pt2": (".pt2",),
}
WHAT = {"state_dict": "a torch.save state_dict", "safetensors": "a safetensors file",
        "hf-sharded": "a folder of safetensors shards", "torchscript": "a TorchScript archive",
        "onnx": "an ONNX model", "pt2": "a torch.export program"}
# an extension that names another format (a name such as "model.v2" keeps its ".v2")
KNOWN = frozenset(e for extensions in EXTENSIONS.values() for e in extensions if e)


def extension(path: str) -> str:
    """``.pt`` of ``a/model.pt``, lower case; "" for a name without one or a folder's
    ``a/model/``."""
    return os.path.splitext(os.path.basename(path.rstrip("/" + os.sep)))[1].lower()


def fits(target: str, path: str) -> bool:
    """Whether ``path``'s extension is one ``target`` is known by."""
    ext = extension(path)
    if target == "hf-sharded":
        return ext not in KNOWN
    return ext in EXTENSIONS.get(target, (ext,))


def with_extension(target: str, path: str) -> str:
    """``path`` in the same folder and with the same stem, named for ``target``: a known
    extension of another format is replaced, an extension ``target`` has is kept, a name
    without a known one gains the usual one."""
    if fits(target, path):
        return path
    stripped = path.rstrip("/" + os.sep)
    stem = stripped[:-len(extension(stripped))] if extension(stripped) in KNOWN else stripped
    return stem + EXTENSIONS.get(target, ("",))[0]


def name_warning(target: str, path: str) -> str:
    """One sentence when ``path`` is named like another format than ``target`` writes ("" if
    it fits)."""
    if target not in EXTENSIONS or fits(target, path):
        return ""
    name = os.path.basename(path.rstrip("/" + os.sep)) or path
    ext = extension(path)
    usual = EXTENSIONS[target][0]
    named = f"named {ext}" if ext else "named without an extension"
    if target == "hf-sharded":
        return (f"{name}: {WHAT[target]} {named}, like a single file; tools that go by the "
                "name will misread it")
    return (f"{name}: {WHAT[target]} {named}; tools that go by the name will misread it "
            f"(the usual extension is {usual})")
