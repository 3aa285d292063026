"""DeepSpeed ZeRO checkpoints (stages 1, 2 and 3): a tag folder of ``*_model_states.pt`` and
``*_optim_states.pt`` files, or the folder above it whose ``latest`` file names the tag.

What ``engine.save_checkpoint(dir)`` writes::

    dir/latest                       the tag, e.g. ``global_step1000``
    dir/zero_to_fp32.py              DeepSpeed's consolidation script (never run here)
    dir/global_step1000/mp_rank_00_model_states.pt                  stages 1-2
    dir/global_step1000/zero_pp_rank_R_mp_rank_00_model_states.pt   stage 3, one per rank
    dir/global_step1000/[bf16_]zero_pp_rank_R_mp_rank_00_optim_states.pt   one per rank

Every file is a ``torch.save`` archive read by the single-file reader (every pickle
interpreted and scanned, none loaded); the verdict is the worst of them, each finding
naming its file. The tree shows the model as DeepSpeed's ``zero_to_fp32.py`` rebuilds it:
each trainable parameter in fp32, named and shaped by ``param_shapes`` and gathered from
the flat partitions of every rank (:mod:`._deepspeed_zero`; its ``pieces`` say where each
run of it lies), the frozen parameters and the buffers (as saved: ``zero_to_fp32.py``
casts buffers to float32). Then, under each file's name (``mp_rank_00_model_states``...),
what that file holds -- DeepSpeed's config, steps, scheduler and client state, the
optimizer's flat ``exp_avg``... -- whose tensors are not part of the model's state_dict.

A missing or unreadable rank file leaves the parameters with a piece in it damaged and a
warning naming it. Only model-parallel rank 0 is read, as ``zero_to_fp32.py`` does.
"""

from __future__ import annotations

import copy
import math
import os
from collections import Counter
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.findings import Finding
from ckpt_inspector.core.io import paths
from ckpt_inspector.core.io.opening import is_url
from ckpt_inspector.core.layouts import _deepspeed_files as df
from ckpt_inspector.core.layouts import _deepspeed_zero as zero
from ckpt_inspector.core.layouts import _remote_code
from ckpt_inspector.core.layouts._union import TORCH_LOADED, file_size, loadable_files
from ckpt_inspector.core.summary import counted
from ckpt_inspector.core.tree import UNKNOWN_DTYPE, Checkpoint, Node, TensorInfo

NAME = "deepspeed-zero"
FP32_GROUPS = {1: "single_partition_of_fp32_groups", 2: "single_partition_of_fp32_groups",
               3: "fp32_flat_groups"}
# The rank count is a number from the file: past this many missing rank files, they are
# one warning and the model is gathered from the ranks before the first missing one only
MAX_MISSING = 16
# pieces (runs of one partition) of all the gathered parameters together; past it, the
# parameters left are shown damaged (a real 1,024-rank checkpoint of 800 tensors has 819,200)
MAX_PIECES = 2_000_000
MAX_NUMEL = 2**63 - 1  # torch's: a damaged parameter claiming more counts no elements


def detect(path: str) -> bool:
    return df.detect(path)


def open(path: str) -> Checkpoint:  # every layout has detect(path) and open(path)
    try:
        reader = df.Reader(path, NAME)
    except OSError as err:
        raise CheckpointError(f"cannot read the folder: {err}") from None
    if reader.tag is not None:
        size = reader.latest_transfer.get("size")  # at a URL: known from reading it
        reader.union.add_file(df.LATEST, size if size is not None else
                              file_size(paths.join(reader.root_folder, df.LATEST)), "text")
        reader.union.count_transfer(reader.latest_transfer)
    with reader.reading():  # at a URL, the files read concurrently
        try:
            names = reader.names()
        except OSError as err:
            raise CheckpointError(f"cannot read the folder: {err}") from None
        try:
            _Build(reader).run(names)
        except OSError as err:
            raise CheckpointError(f"cannot read the checkpoint: {err}") from None
    _remote_code.loose_code(reader.ckpt, reader.root_folder)
    _universal(reader)
    return reader.ckpt


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


class _Build:
    """Reads the files of one tag folder and puts the model together."""

    def __init__(self, reader: df.Reader):
        self.reader = reader
        self.ckpt = reader.ckpt
        self.entries: dict[str, Node] = {}
        self.stage: int | None = None
        self.world = 0
        self.lost: str | None = None  # why a rank's partitions are unknown
        self.first_bad = 0  # the first rank whose partitions are unknown (or how many are read)
        self.cut = False  # ranks after a missing one are not read (too many missing)
        self.pieces = 0  # pieces made so far (MAX_PIECES)
        # what DeepSpeed also torch.loads: model-parallel ranks above 0, experts' files
        self.also_loaded: list[str] = []

    # -- files ---------------------------------------------------------------------------
    def run(self, names: list[str]) -> None:
        models, optims, prefix = self._names(names)
        self.reader.prefetch(models + optims)  # at a URL: read concurrently
        read = {n: self.reader.file(n) for n in models + optims}
        first_optim = next((read[n] for n in optims if read[n].part is not None), None)
        self.stage, self.world = self._facts(read, models, first_optim, len(optims))
        if self.stage == 3:
            models = [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(self.world)]
        elif "mp_rank_00_model_states.pt" in read or not models:
            models = ["mp_rank_00_model_states.pt"]
        want = [f"{prefix}zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(self.world)
                if optims or self.stage in FP32_GROUPS]  # none in a checkpoint without ZeRO
        models, want = self._missing(read, models, want)
        wanted = set(want)
        extra = [n for n in optims if n not in wanted]
        if extra:
            self.ckpt.findings.append(Finding(
                "info", "zero-partitions", f"{counted(len(extra), 'optimizer file')} beyond the "
                f"{self.world} ranks the checkpoint says it has, e.g. {extra[0]}: not used",
                file=self.reader.prefix + extra[0]))
        model_files = [read[n] for n in models]
        rank_files = [read[n] for n in want]
        self._model(model_files, rank_files)
        # the other model-parallel ranks' files and the tag folder's other loadable files:
        # not the model zero_to_fp32.py rebuilds, but what DeepSpeed's load_checkpoint
        # torch.loads (on those ranks, or for the experts): read, so that
        # their pickles count in the verdict, and shown under their names
        self.reader.prefetch(self.also_loaded)
        for name in self.also_loaded:
            read[name] = self.reader.file(name)
        first = set(models)
        for name in sorted(read, key=lambda n: (n not in first, n)):
            self._subtree(read[name])

    def _missing(self, read: dict[str, df.File], models: list[str],
                 want: list[str]) -> tuple[list[str], list[str]]:
        """Read the rank files not read yet. Where more than ``MAX_MISSING`` are missing,
        the rank count the file claims is not believed rank by rank: one warning, and only
        the ranks before the first missing one are used."""
        missing = [n for n in models + want if n not in read]
        if len(missing) <= MAX_MISSING:
            self.reader.prefetch(missing)
            for name in missing:
                read[name] = self.reader.file(name)
            return models, want
        gone = set(missing)
        cut = next(r for r in range(self.world)
                   if (models[r] if len(models) > 1 else "") in gone or want[r] in gone)
        example = self.reader.prefix + missing[0]
        self.lost = (f"its file {example} is missing (one of {len(missing):,} rank files "
                     "missing)")
        self.cut = True
        self.ckpt.warnings.append(
            f"{counted(len(missing), 'rank file')} missing (the checkpoint says it has "
            f"{self.world:,} ranks), e.g. {example}: the parameters with a piece in them are "
            "shown damaged")
        cut = max(cut, 1)
        models, want = (models[:cut] if len(models) > 1 else models), want[:cut]
        for name in models + want:
            if name not in read:  # rank 0's: what it holds is shown damaged
                read[name] = self.reader.file(name)
        return models, want

    def _names(self, names: list[str]) -> tuple[list[str], list[str], str]:
        """The model states and optimizer files of model-parallel rank 0, in rank order, and
        the optimizer files' prefix (``bf16_``, or none)."""
        models, optims, skipped = [], [], []
        for n in names:
            for pattern, out in ((df.MODEL, models), (df.OPTIM, optims)):
                if pattern.match(n):
                    (out if df.rank_of(n, pattern)[0] == 0 else skipped).append(n)
        # and what else DeepSpeed torch.loads from the tag folder (a mixture of experts'
        # layer_L_expert_E_mp_rank_00_model_states.pt, a client's own files)
        loaded = [n for n in names if n.endswith(TORCH_LOADED) and n not in skipped
                  and not (df.MODEL.match(n) or df.OPTIM.match(n))]
        self.also_loaded = sorted(skipped) + sorted(loaded)
        if skipped:
            self.ckpt.warnings.append(
                f"{counted(len(skipped), 'file')} of model-parallel ranks above 0 are not part "
                f"of the model shown (zero_to_fp32.py rebuilds rank 0), e.g. "
                f"{self.reader.prefix}{skipped[0]}: their pickles are read for the verdict "
                "and each is shown under its name")
        models.sort(key=lambda n: df.rank_of(n, df.MODEL))
        optims.sort(key=lambda n: df.rank_of(n, df.OPTIM))
        prefixes = [m["prefix"] for n in optims if (m := df.OPTIM.match(n))]
        prefix = Counter(prefixes).most_common(1)[0][0] if prefixes else ""
        return models, [n for n in optims if df.OPTIM.match(n)["prefix"] == prefix], prefix  # type: ignore[index]

    def _facts(self, read: dict[str, df.File], models: list[str], optim: df.File | None,
               found: int) -> tuple[int | None, int]:
        """The ZeRO stage and the number of data-parallel ranks."""
        osd = optim.value.get("optimizer_state_dict") if optim is not None else None
        osd = osd if isinstance(osd, dict) else {}
        model = next((read[n] for n in models if read[n].part is not None), None)
        mv = model.value if model is not None else {}
        stage = osd.get("zero_stage")
        if type(stage) is not int:
            config = mv.get("ds_config")
            zo = config.get("zero_optimization") if isinstance(config, dict) else None
            stage = zo.get("stage") if isinstance(zo, dict) else None
            if type(stage) is not int and any(df.MODEL.match(n)["dp"] for n in models):  # type: ignore[index]
                stage = 3
        world = osd.get("partition_count")
        if isinstance(world, list) and world and all(type(w) is int for w in world):
            world = max(world)
        if type(world) is not int:
            world = mv.get("dp_world_size")
        if type(world) is not int or not 1 <= world <= df.MAX_RANKS:
            world = found
        if optim is not None and stage not in FP32_GROUPS:
            self.ckpt.findings.append(Finding("info", "zero-partitions", f"ZeRO stage {stage!r}:"
                                              " not one this reader rebuilds", file=optim.rel))
        return (stage if type(stage) is int else None), world

    def _subtree(self, f: df.File) -> None:
        """What a file holds, under its name; its tensors are not the model's."""
        if f.root is None:
            return
        for node in f.root.walk():
            if node.kind == "tensor":
                node.role = "attribute"
        stem = os.path.basename(f.rel).removesuffix(".pt")
        if stem not in self.entries:
            self.reader.union.put(stem, f.root, f.rel)

    # -- the model -----------------------------------------------------------------------
    def _model(self, models: list[df.File], ranks: list[df.File]) -> None:
        ckpt = self.ckpt
        main = models[0]
        mv = main.value
        ckpt.metadata.update({"zero stage": self.stage, "world size": self.world,
                              "ds_version": mv.get("ds_version"),
                              "tag": self.reader.tag or _folder_name(self.reader.folder)})
        for key in ("global_steps", "global_samples", "skipped_steps"):
            if type(mv.get(key)) is int:
                ckpt.metadata[key.replace("_", " ")] = mv[key]
        if main.part is None:
            ckpt.warnings.append(f"without {main.rel}, the parameters' names and shapes are "
                                 "unknown: only the files are shown")
            return
        module = df.child(main.root, "module")
        if self.stage not in FP32_GROUPS or not ranks:
            ckpt.warnings.append("no ZeRO optimizer states: the module's weights are shown "
                                 "as saved")
            buffers = mv.get("buffer_names") if isinstance(mv.get("buffer_names"), list) else []
            for node in module.children if module is not None else ():
                if node.kind == "tensor":
                    role = "buffer" if node.key in buffers else "parameter"
                    self._put(str(node.key), _copy(node, role), main.rel)
            self._order(module)
            return
        shapes = _param_shapes(mv.get("param_shapes"))
        if shapes is None:
            ckpt.warnings.append(f"{main.rel} has no param_shapes: the fp32 weights cannot be "
                                 "named")
            shapes = []
        self._buffers(main, module)
        self._frozen(models)
        parts = self._partitions(ranks)
        if self.stage == 3:
            self._zero3(shapes, parts, ranks)
        else:
            self._zero12(shapes, parts, ranks[0].rel)
        self._shared(mv.get("shared_params"), main.rel)
        ckpt.metadata["parameter groups"] = len(shapes)
        self._order(module)

    def _buffers(self, main: df.File, module: Node | None) -> None:
        names = main.value.get("buffer_names")
        names = {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()
        for node in module.children if module is not None else ():
            if node.kind == "tensor" and node.key in names:
                self._put(str(node.key), _copy(node, "buffer"), main.rel)

    def _frozen(self, models: list[df.File]) -> None:
        shapes = df.shapes_of(models[0].value.get("frozen_param_shapes")) or {}
        frags = [_fragments(f) for f in models]
        for name, shape in shapes.items():
            if self.stage != 3:
                node = frags[0].get(name)
                if node is None or node.tensor is None:
                    info = _damaged(shape, models[0].rel, f"{models[0].rel} holds no fragment")
                else:
                    info = zero.as_shape(name, copy.copy(node.tensor), shape, models[0].rel)
                self._put(name, zero_node(name, info, "parameter"), models[0].rel)
                continue
            n = _numel(shape)
            per = zero.partitioned(n, self.world)
            segs, total = [], 0
            for f, frag in zip(models, frags):
                if total >= n:
                    break
                node = frag.get(name)
                t = node.tensor if node is not None else None
                problem = f.problem or (None if t else f"{f.rel} holds no fragment of it")
                size = t.numel if t else per
                segs.append(zero.Seg(zero.Part(f.rel, size, t, problem), 0, size))
                total += size
            if total < n:
                info = _damaged(shape, models[0].rel, self.lost if self.cut else
                                "its fragments are too short")
            elif not self._spend(len(segs)):
                info = _damaged(shape, models[0].rel, _over())
            else:
                info = zero.gathered(name, shape, zero.head(segs, n))
            self._put(name, zero_node(name, info, "parameter"), info.file or models[0].rel)

    def _partitions(self, ranks: list[df.File]) -> list[list[zero.Part]]:
        """Each rank's flat fp32 groups, each checked against the bytes stored for it; a
        rank whose file is missing gets parts of the sizes the others have, with no data."""
        key = FP32_GROUPS[self.stage]  # type: ignore[index]
        found: list[list[TensorInfo] | None] = []
        for f in ranks:
            node = df.child(f.root, "optimizer_state_dict", key)
            if node is not None and node.kind == "tensor":
                found.append([node.tensor])  # type: ignore[list-item]
            elif node is not None:
                found.append([c.tensor for c in node.children if c.tensor is not None])
            else:
                found.append(None)
                if f.part is not None:
                    f.problem = f"{f.rel} holds no {key}"
                    self.ckpt.warnings.append(f.problem)
        bad = {id(t): why for f, groups in zip(ranks, found) for t in groups or ()
               if (why := zero.unusable(f.rel, t))}
        template = next((g for g in found if g is not None and not any(
            id(t) in bad for t in g)), None) or next((g for g in found if g is not None), None)
        self.lost = self.lost or next((f.problem for f in ranks if f.problem), None)
        self.first_bad = next((r for r, g in enumerate(found) if g is None), len(ranks))
        out = []
        for f, groups in zip(ranks, found):
            if groups is None:
                groups_parts = [zero.Part(f.rel, t.numel, None, f.problem, g)
                                for g, t in enumerate(template or ())]
            else:
                groups_parts = [zero.Part(f.rel, t.numel, None if id(t) in bad else t,
                                          bad.get(id(t)), g) for g, t in enumerate(groups)]
            out.append(groups_parts)
        return out

    def _zero12(self, shapes: list[dict[str, tuple[int, ...]]], parts: list[list[zero.Part]],
                rel: str) -> None:
        for g, group_shapes in enumerate(shapes):
            group = zero.Flat([rank[g] for rank in parts if g < len(rank)])
            offset = 0
            for name, shape in group_shapes.items():
                n = _numel(shape)
                self._gather(name, shape, rel, group.span(offset, n), group.take, offset, n)
                offset += n
            avail = group.numel
            if not self.cut and \
                    zero.zero2_align(offset, self.world) != zero.zero2_align(avail, self.world):
                _finding(self.ckpt, rel, f"group {g}: its parameters take {zero.count(offset)} "
                         f"of the {zero.count(avail)} elements of its partitions (more than the "
                         "padding)")

    def _zero3(self, shapes: list[dict[str, tuple[int, ...]]], parts: list[list[zero.Part]],
               ranks: list[df.File]) -> None:
        rel = ranks[0].rel
        flats = [zero.Flat(rank) for rank in parts]
        offset = 0
        for name, shape in {k: v for d in shapes for k, v in d.items()}.items():
            n = _numel(shape)
            per = zero.partitioned(n, self.world)
            k = zero.ranks_needed(n, per)
            if k > self.first_bad:  # a rank holding some of it is missing: no pieces made
                why = ranks[self.first_bad].problem if self.first_bad < len(ranks) else None
                self._put(name, zero_node(name, _damaged(shape, rel, why or self.lost or
                                                         "a rank's file is missing"),
                                          "parameter"), rel)
            else:
                cost = k * max(1, flats[0].span(offset, per)) if flats else 0
                self._gather(name, shape, rel, cost, zero.zero3_take, flats, offset, per, n)
            offset += per
        avail = flats[0].numel * self.world if flats else 0
        if not self.cut and offset * self.world != avail:
            _finding(self.ckpt, rel, f"its parameters take {zero.count(offset * self.world)} "
                     f"of the {zero.count(avail)} elements of the ranks' partitions")

    def _gather(self, name: str, shape: tuple[int, ...], rel: str, cost: int, segs: Any,
                *args: Any) -> None:
        """The parameter ``name`` made of the runs ``segs(*args)`` says (``cost`` of them
        at most)."""
        if not self._spend(cost):
            info = _damaged(shape, rel, _over())
        else:
            try:
                info = zero.gathered(name, shape, segs(*args))
            except zero.Short as err:
                info = _damaged(shape, rel, self.lost or str(err))
        self._put(name, zero_node(name, info, "parameter"), info.file or rel)

    def _spend(self, pieces: int) -> bool:
        """Whether ``pieces`` more pieces keep to MAX_PIECES (once past it, none do)."""
        if self.pieces + pieces <= MAX_PIECES:
            self.pieces += pieces
            return True
        if self.pieces <= MAX_PIECES:
            self.pieces = MAX_PIECES + 1
            self.ckpt.warnings.append(f"the parameters are cut in over {MAX_PIECES:,} pieces "
                                      "in all: those past it are shown damaged")
        return False

    def _shared(self, shared: Any, rel: str) -> None:
        for alias, target in (shared.items() if isinstance(shared, dict) else ()):
            node = self.entries.get(target) if isinstance(target, str) else None
            if isinstance(alias, str) and node is not None and node.tensor is not None:
                self._put(alias, _copy(node, "parameter"), node.tensor.file or rel)

    def _put(self, key: str, node: Node, rel: str) -> None:
        t = node.tensor
        if t is not None and t.problem and t.dtype != UNKNOWN_DTYPE and t.numel > MAX_NUMEL:
            # a shape no tensor has (int64 numel): counts nothing, as a shape unknown
            t.problem += f" (its shape claims {zero.count(t.numel)} elements)"
            t.dtype = UNKNOWN_DTYPE
        node.key = key
        self.entries[key] = node

    def _order(self, module: Node | None) -> None:
        """The entries in the module's order, then the others in zero_to_fp32's."""
        order = [str(c.key) for c in module.children] if module is not None else []
        keys = [k for k in order if k in self.entries]
        seen = set(keys)
        keys += [k for k in self.entries if k not in seen]
        for key in keys:
            node = self.entries[key]
            rel = node.tensor.file if node.tensor is not None and node.tensor.file else ""
            self.reader.union.put(key, node, rel)
        count = {r: sum(1 for n in self.entries.values() if n.role == r)
                 for r in ("parameter", "buffer")}
        self.ckpt.metadata["parameters"] = count["parameter"]
        self.ckpt.metadata["buffers"] = count["buffer"]


def _folder_name(folder: str) -> str:
    return paths.basename(folder) if is_url(folder) else os.path.basename(os.path.abspath(folder))


def _param_shapes(value: Any) -> list[dict[str, tuple[int, ...]]] | None:
    groups = value if isinstance(value, list) else [value] if isinstance(value, dict) else None
    if groups is None:
        return None
    out = [df.shapes_of(g) for g in groups]
    return None if any(g is None for g in out) else out  # type: ignore[return-value]


def _over() -> str:
    return f"not gathered: the parameters are cut in over {MAX_PIECES:,} pieces in all"


def _fragments(f: df.File) -> dict[Any, Node]:
    """The frozen parameters' fragments a model states file holds, by name."""
    node = df.child(f.root, "frozen_param_fragments")
    return {c.key: c for c in reversed(node.children) if isinstance(c.key, (str, int))} \
        if node is not None else {}


def _copy(node: Node, role: str | None) -> Node:
    """A top-level entry made from a tensor of one of the files (which keeps its own)."""
    info = copy.copy(node.tensor) if node.tensor is not None else None
    return Node("tensor", node.key, node.type_name or "torch.Tensor", tensor=info, role=role)


def zero_node(key: str, info: TensorInfo, role: str) -> Node:
    return Node("tensor", key, "torch.Tensor", tensor=info, role=role)


def _damaged(shape: tuple[int, ...], rel: str, problem: str) -> TensorInfo:
    return TensorInfo("float32", shape, problem=problem, file=rel)


def _finding(ckpt: Checkpoint, rel: str, message: str) -> None:
    ckpt.findings.append(Finding("info", "zero-partitions", message, file=rel))


# -- universal checkpoints ------------------------------------------------------------------
UNIVERSAL = "latest_universal"
MAX_UNIVERSAL = 10_000


def _universal(reader: df.Reader) -> None:
    """What DeepSpeed also torch.loads from a universal checkpoint, for the verdict (a local
    folder): the files in the tag folder's subfolders (``zero/*/fp32.pt``,
    ``zero/optimizer_state.pt``), and the whole folder ``latest_universal`` names (DeepSpeed
    loads it instead, with ``load_universal``)."""
    root = reader.root_folder
    if is_url(root):
        return
    if reader.tag is not None or paths.isdir(paths.join(reader.folder, "zero")):
        sub = [rel for rel in _loadable(reader.folder, reader.ckpt)
               if os.sep in rel]  # the tag's own files are read above
        _absorb_all(reader, reader.folder, reader.prefix, sub)
    try:
        tag = df.read_latest(root, name=UNIVERSAL)
    except OSError as err:
        tag, err = None, CheckpointError(str(err))
        reader.union.unreadable(UNIVERSAL, paths.join(root, UNIVERSAL), err, shown=False)
    except CheckpointError as err:
        reader.union.unreadable(UNIVERSAL, paths.join(root, UNIVERSAL), err, shown=False)
        return
    if tag is None or tag.strip("/") == (reader.tag or "").strip("/"):
        return
    if not df.inside(tag):
        reader.ckpt.findings.append(Finding(
            "dangerous", "path-outside", f"{UNIVERSAL} names {tag!r}, outside the "
            "checkpoint's folder: DeepSpeed would load what is there", file=UNIVERSAL))
        return
    folder = paths.join(root, tag)
    _absorb_all(reader, folder, f"{tag}/", _loadable(folder, reader.ckpt))


def _loadable(folder: str, ckpt: Checkpoint) -> list[str]:
    """The files under ``folder`` that DeepSpeed may torch.load (at most MAX_UNIVERSAL)."""
    found = loadable_files(folder, 4, MAX_UNIVERSAL)  # zero/<param>/ and below
    if len(found) > MAX_UNIVERSAL:
        ckpt.findings.append(Finding(
            "needs-trust", "unread-files", f"{folder} holds more than {MAX_UNIVERSAL:,} "
            "files DeepSpeed loads: only the first were read for the verdict"))
    return found[:MAX_UNIVERSAL]


def _absorb_all(reader: df.Reader, folder: str, prefix: str, names: list[str]) -> None:
    from ckpt_inspector.core.layouts._union import read_file

    for rel in names:
        full = paths.join(folder, rel)
        name = prefix + rel.replace(os.sep, "/")
        try:
            part = read_file(full)
        except OSError as err:
            reader.union.unreadable(name, full, CheckpointError(str(err)), shown=False)
            continue
        except CheckpointError as err:
            reader.union.unreadable(name, full, err, shown=False)
            continue
        reader.ckpt.verdict_files.append({"path": name, "size": part.file_size,
                                          "format": part.format})
        reader.union.absorb(name, part)
