"""The optional parts of ckpt-inspector and what installs each: a light install
(``pip install ckpt-inspector``) reads, scans, compares and exports to safetensors without
torch; loading, the other exports, ``check``, ``arch``, ``devices`` and ``demo`` need
``pip install 'ckpt-inspector[torch]'``."""

from __future__ import annotations

# the top-level module a feature imports -> the extra that installs it
EXTRAS = {"torch": "torch", "torchvision": "torch", "onnxscript": "torch"}


def install_hint(extra: str) -> str:
    return f"pip install 'ckpt-inspector[{extra}]'"


def missing(err: BaseException) -> str | None:
    """What to say for an import that failed because an optional part is not installed
    (``"needs torch, which is not installed here: pip install 'ckpt-inspector[torch]'"``);
    None for any other error."""
    if not isinstance(err, ModuleNotFoundError):
        return None
    root = (err.name or "").partition(".")[0]
    extra = EXTRAS.get(root)
    if extra is None:
        return None
    return f"needs {root}, which is not installed here: {install_hint(extra)}"
