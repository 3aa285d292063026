"""Is this file one part of a checkpoint made of several? :func:`whole_model_for`.

Opening one shard on its own shows that shard; the window (and ``info``) then says
"shard 2 of 5 of a sharded model" and offers what opens the whole model. Everything here is
decided from names in the file's folder (one listing), never by reading a shard:

- a Hugging Face shard ``PREFIX-0000K-of-0000N.{safetensors,bin}``: its index
  (``PREFIX.EXT.index.json``) or its folder;
- a GGUF split ``NAME-0000K-of-0000N.gguf``: its folder, where that opens its set;
- a ``torch.distributed.checkpoint`` item file ``__R_I.distcp`` beside ``.metadata``;
- a DeepSpeed rank file (``mp_rank_00_model_states.pt``,
  ``zero_pp_rank_0_mp_rank_00_optim_states.pt``): its tag folder.

Only a whole that some layout of :mod:`ckpt_inspector.core.layouts` opens is offered: the
answer is None for a file that is complete by itself, or whose siblings no layout reads.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ckpt_inspector.core.layouts import _deepspeed_files as deepspeed_files
from ckpt_inspector.core.layouts import gguf_split, layout_for
from ckpt_inspector.core.layouts.hf_sharded import INDEX, SHARD, indexes, shard_groups

DISTCP = re.compile(r"^__\d+_\d+\.distcp$")


@dataclass(frozen=True)
class WholeModel:
    """The checkpoint a file is one part of."""

    path: str  # what opens the whole: the folder (as File > Open Folder does) or its index
    folder: str
    index: str | None  # the index file (a name in ``folder``) that lists this part, if any
    part: int  # this file's number, from 1
    count: int  # how many parts the whole has
    kind: str  # "sharded model", "GGUF model", "torch.distributed checkpoint", ...

    def describe(self) -> str:
        """``shard 2 of 5 of a sharded model``."""
        if self.count == 1:
            return f"the only data file of a {self.kind}"
        noun = {"sharded model": "shard", "GGUF model": "split"}.get(self.kind, "file")
        return f"{noun} {self.part} of {self.count} of a {self.kind}"


def whole_model_for(path: str | os.PathLike[str]) -> WholeModel | None:
    """The checkpoint made of several files that ``path`` (a file) is one part of, or None.
    Never raises: a folder that cannot be listed answers None."""
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    try:
        if not os.path.isfile(path):
            return None
        if m := SHARD.match(name):
            return _hf_shard(folder, name, m)
        if m := gguf_split.SPLIT.match(name):
            return _gguf_split(folder, name, m)
        if DISTCP.match(name):
            return _distcp(folder, name)
        if deepspeed_files.MODEL.match(name) or deepspeed_files.OPTIM.match(name):
            return _deepspeed(folder, name)
    except (OSError, ValueError):
        return None
    return None


def _hf_shard(folder: str, name: str, m: re.Match[str]) -> WholeModel | None:
    part, count = int(m["k"]), int(m["n"])
    if count < 2 or not 1 <= part <= count:
        return None
    names = os.listdir(folder)
    own = [n for n in indexes(folder, names)
           if (i := INDEX.match(n)) and (i["prefix"], i["ext"]) == (m["prefix"], m["ext"])]
    index = own[0] if own else None
    if index is not None:
        # the folder opens the index transformers would read first: ours, or open ours
        first = indexes(folder, names)[0]
        target = folder if first == index else os.path.join(folder, index)
    elif not indexes(folder, names) and any(name in g for g in shard_groups(names)[:1]):
        target = folder
    else:
        return None
    if layout_for(target) is None:
        return None
    return WholeModel(target, folder, index, part, count, "sharded model")


def _gguf_split(folder: str, name: str, m: re.Match[str]) -> WholeModel | None:
    part, count = int(m["k"]), int(m["n"])
    if count < 2 or not 1 <= part <= count:
        return None
    sets = gguf_split.split_sets(os.listdir(folder))
    if not sets or name not in sets[0] or layout_for(folder) is None:
        return None  # the folder opens another set of splits
    return WholeModel(folder, folder, None, part, count, "GGUF model")


def _distcp(folder: str, name: str) -> WholeModel | None:
    items = sorted((n for n in os.listdir(folder) if DISTCP.match(n)),
                   key=lambda n: tuple(int(x) for x in n[2:-7].split("_")))
    if not items or layout_for(folder) is None:
        return None
    return WholeModel(folder, folder, None, items.index(name) + 1, len(items),
                      "torch.distributed checkpoint")


def _deepspeed(folder: str, name: str) -> WholeModel | None:
    ranks = sorted(n for n in os.listdir(folder)
                   if deepspeed_files.MODEL.match(n) or deepspeed_files.OPTIM.match(n))
    if layout_for(folder) is None:
        return None
    return WholeModel(folder, folder, None, ranks.index(name) + 1, len(ranks),
                      "DeepSpeed checkpoint")
