"""PEFT adapters: ``adapter_config.json`` beside ``adapter_model.safetensors`` (or
``adapter_model.bin``, or shards of either with their index), as ``save_pretrained`` of a
PEFT model writes them.

What it opens: such a folder, or its ``adapter_config.json``. The weights are read as
``hf-sharded`` reads a model's (a ``.bin`` pickle interpreted, never loaded; safetensors
before ``.bin``, as PEFT loads them); ``adapter_config.json`` goes into the metadata as
``adapter_config``, where :func:`~ckpt_inspector.core.adapters.find_adapter` takes rank,
alpha and the rest from. The file ``adapter_model.safetensors`` opened on its own is a
safetensors file, and the same configuration is read from beside it.
"""

from __future__ import annotations

import re

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.io import paths
from ckpt_inspector.core.io.opening import is_url
from ckpt_inspector.core.layouts import hf_sharded
from ckpt_inspector.core.tree import Checkpoint

NAME = "peft-adapter"
CONFIG = "adapter_config.json"
METADATA = "adapter_config"
WEIGHTS = re.compile(r"^adapter_model(?:\.(?P<variant>[^./]+))?\.(?:safetensors|bin)$")


def _folder_of(path: str) -> str | None:
    """The adapter's folder when ``path`` is one or is its ``adapter_config.json``."""
    if paths.basename(path.rstrip("/")) == CONFIG:
        return paths.dirname(path)
    if is_url(path) and paths.names_a_file(path):
        return None  # another file's URL: never a request to find out
    return path if paths.isdir(path) else None


def _weights(folder: str, names: list[str]) -> tuple[str | None, list[str]]:
    """The adapter's index (if sharded), else its weights files, the one PEFT loads first."""
    index = [n for n in hf_sharded.indexes(folder, names) if n.startswith("adapter_model.")]
    if index:
        return index[0], []
    return None, [n for n in hf_sharded.singles(folder, names) if WEIGHTS.match(n)]


def detect(path: str) -> bool:
    folder = _folder_of(path)
    if folder is None:
        return False
    try:
        names = paths.listdir(folder)
    except CheckpointError:  # a folder at an HTTP URL: nothing lists it
        return False
    if CONFIG not in names:
        return False
    index, files = _weights(folder, names)
    return bool(index or files)


def open(path: str) -> Checkpoint:  # every layout has detect(path) and open(path)
    folder = _folder_of(path)
    if folder is None:
        raise CheckpointError("is not a PEFT adapter's folder")
    try:
        index, files = _weights(folder, paths.listdir(folder))
        if not index and not files:
            raise CheckpointError("the adapter's folder holds no adapter_model file")
        plan = hf_sharded.plan_files(folder, files, index)
    except OSError as err:
        raise CheckpointError(f"cannot read the adapter's folder: {err}") from None
    ckpt = hf_sharded.read_plan(path, plan, NAME)
    _config(ckpt, folder)
    return ckpt


def _config(ckpt: Checkpoint, folder: str) -> None:
    try:
        config = hf_sharded.read_json(paths.join(folder, CONFIG), CONFIG)
    except (CheckpointError, OSError) as err:
        ckpt.warnings.append(f"{CONFIG} cannot be read: {err}")
        return
    if not isinstance(config, dict):
        ckpt.warnings.append(f"{CONFIG} is not a JSON object")
        return
    ckpt.metadata[METADATA] = config
