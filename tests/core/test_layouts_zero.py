"""DeepSpeed ZeRO checkpoints (``core/layouts/deepspeed``): every file read by our pickle
interpreter, never loaded; the fp32 weights gathered from the ranks' flat partitions and
checked against the weights saved, against a reference written from ``zero_to_fp32``'s
algorithm and, where DeepSpeed is installed, against DeepSpeed itself."""

from __future__ import annotations

import importlib.util
import socket

import pytest
import zero_files

from ckpt_inspector.core import open_checkpoint
from ckpt_inspector.core.scan import scan
from ckpt_inspector.core.tensors import to_torch

CASES = [(1, 1), (1, 3), (2, 1), (2, 2), (2, 3), (3, 1), (3, 2), (3, 3)]


def _model(ckpt):
    """The top-level tensors: the consolidated state_dict."""
    return {str(n.key): n.tensor for n in ckpt.root.children if n.kind == "tensor"}


@pytest.fixture(scope="module")
def made(torch, tmp_path_factory):
    root = tmp_path_factory.mktemp("zero")
    return {(s, w): zero_files.save(torch, root / f"z{s}w{w}", s, w,
                                    half=torch.bfloat16 if w == 2 else None)
            for s, w in CASES}


@pytest.mark.parametrize("stage,world", CASES)
def test_weights_match_the_saved_ones_and_zero_to_fp32(made, torch, stage, world):
    root = made[(stage, world)]
    ckpt = open_checkpoint(root)
    assert ckpt.format == "deepspeed-zero"
    assert not ckpt.warnings and not [f for f in ckpt.findings if f.code == "zero-partitions"]
    got = _model(ckpt)
    half = torch.bfloat16 if world == 2 else torch.float32
    want = zero_files.expected(torch)
    ref = zero_files.reference(torch, root / zero_files.TAG)
    assert list(got) == list(want)  # the module's order, the alias last
    assert set(ref) == set(want)
    for key, t in want.items():
        info = got[key]
        assert info.problem is None, (key, info.problem)
        assert tuple(info.shape) == tuple(t.shape), key
        value = to_torch(info)
        if key in zero_files.FROZEN:
            t = t.to(half)
        assert value.dtype == t.dtype, key
        assert torch.equal(value, t), key
        assert torch.equal(value.to(ref[key].dtype), ref[key]), key
    m = ckpt.metadata
    assert (m["zero stage"], m["world size"], m["tag"], m["ds_version"]) == \
        (stage, world, zero_files.TAG, zero_files.DS_VERSION)
    assert m["parameter groups"] == 2 and m["buffers"] == 2


def test_pieces_name_each_rank_and_stream_in_order(made, torch):
    ckpt = open_checkpoint(made[(3, 3)] / zero_files.TAG)  # the tag folder itself
    info = _model(ckpt)["layer.weight"]
    files = [p["file"] for p in info.pieces]
    assert files == [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(3)]
    assert [p["numel"] for p in info.pieces] == [12, 12, 11]  # 35 in 3 pieces of 12
    assert [p["at"] for p in info.pieces] == [0, 12, 24]
    src = info.storage.source
    streamed = b"".join(bytes(b) for b in src.blocks(0, None, 8))
    assert streamed == b"".join(src.chunks()) == bytes(src.buffer()) == src.read()
    assert src.read(40, 20) == streamed[40:60]
    assert torch.equal(to_torch(info), zero_files.model_weights(torch)["layer.weight"])
    # stages 1-2: a parameter that straddles two ranks
    straddle = [i for i in _model(open_checkpoint(made[(2, 3)])).values()
                if i.pieces and len({p["file"] for p in i.pieces}) > 1]
    assert straddle


def test_files_values_and_verdict(made):
    ckpt = open_checkpoint(made[(2, 2)])
    files = {f["path"]: f for f in ckpt.files}
    tag = zero_files.TAG
    assert set(files) == {"latest", f"{tag}/mp_rank_00_model_states.pt",
                          f"{tag}/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
                          f"{tag}/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"}
    model = ckpt.root.children
    states = next(n for n in model if n.key == "mp_rank_00_model_states")
    assert {"ds_config", "global_steps", "lr_scheduler", "epoch"} <= \
        {str(c.key) for c in states.children}
    assert all(n.role == "attribute" for n in states.walk() if n.kind == "tensor")
    report = scan(ckpt)
    # DeepSpeed's own classes are imported by torch.load, as with real files
    assert report.verdict == "needs-trust"
    assert all(f.file for f in report.findings if f.severity != "info")


def test_payload_in_model_states_is_dangerous_and_never_runs(torch, tmp_path):
    from support import Payload

    marker = tmp_path / "marker"
    root = zero_files.save(torch, tmp_path / "evil", 3, 2,
                           extra={"client": Payload(f"touch {marker}")})
    ckpt = open_checkpoint(root)
    report = scan(ckpt)
    assert report.verdict == "dangerous"
    bad = {f.file for f in report.findings if f.severity == "dangerous"}
    assert bad == {f"{zero_files.TAG}/zero_pp_rank_{r}_mp_rank_00_model_states.pt"
                   for r in range(2)}
    assert all(i.problem is None for i in _model(ckpt).values())
    assert not marker.exists()


@pytest.mark.parametrize("stage", [2, 3])
def test_missing_or_truncated_rank_file_marks_its_tensors_damaged(torch, tmp_path, stage):
    root = zero_files.save(torch, tmp_path / "z", stage, 2)
    lost = root / zero_files.TAG / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    lost.write_bytes(lost.read_bytes()[:300])
    ckpt = open_checkpoint(root)
    rel = f"{zero_files.TAG}/{lost.name}"
    assert any(rel in w for w in ckpt.warnings)
    model = _model(ckpt)
    damaged = {k for k, i in model.items() if i.problem}
    assert damaged and all(rel in model[k].problem for k in damaged)
    assert "norm.running" not in damaged and "frozen.weight" not in damaged
    if stage == 3:  # a piece of every parameter on every rank, but head.bias's is padding
        assert damaged == {"embed.weight", "layer.weight", "layer.bias", "head.weight",
                           "tied.weight"}
    else:  # the first half of each group is rank 0's
        assert "embed.weight" not in damaged and "head.bias" in damaged
    lost.unlink()
    ckpt = open_checkpoint(root)
    assert any(f"{rel} is missing" in w for w in ckpt.warnings)
    assert {k for k, i in _model(ckpt).items() if i.problem} == damaged


def test_without_zero_the_module_is_shown(torch, tmp_path):
    root = zero_files.save(torch, tmp_path / "z", 2, 1)
    for path in (root / zero_files.TAG).glob("*_optim_states.pt"):
        path.unlink()
    states = root / zero_files.TAG / "mp_rank_00_model_states.pt"
    saved = torch.load(states, weights_only=False)  # our own file: trusted here
    saved["ds_config"]["zero_optimization"]["stage"] = 0  # DeepSpeed without ZeRO
    torch.save(saved, states)
    ckpt = open_checkpoint(root)
    assert any("no ZeRO optimizer states" in w for w in ckpt.warnings)
    got = _model(ckpt)
    for key, t in zero_files.model_weights(torch).items():
        assert torch.equal(to_torch(got[key]), t), key
    assert ckpt.metadata["buffers"] == 2


def test_latest_naming_nothing_is_one_clear_error(made, tmp_path):
    from ckpt_inspector.core.errors import CheckpointError

    (tmp_path / "latest").write_text("global_step9")
    (tmp_path / "zero_to_fp32.py").write_text("# DeepSpeed's script\n")
    with pytest.raises(CheckpointError, match="global_step9"):
        open_checkpoint(tmp_path)
    (tmp_path / "latest").write_text("../../etc")
    with pytest.raises(CheckpointError, match="outside"):
        open_checkpoint(tmp_path)


# -- real DeepSpeed --------------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="deepspeed is not installed (not a dependency)")
@pytest.mark.parametrize("stage", [2, 3])
def test_real_deepspeed_checkpoint_matches_its_zero_to_fp32(torch, tmp_path, stage):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = zero_files.save_real(tmp_path, stage, 2, port)
    ref = get_fp32_state_dict_from_zero_checkpoint(str(root))
    ckpt = open_checkpoint(root)
    assert ckpt.metadata["zero stage"] == stage and ckpt.metadata["world size"] == 2
    got = _model(ckpt)
    assert set(got) == set(ref)
    for key, t in ref.items():
        value = to_torch(got[key])
        assert value.shape == t.shape
        assert torch.equal(value.to(t.dtype), t), key


def test_shared_references_nested_30_deep_in_a_deepspeed_file_are_read_once(
        torch, tmp_path, monkeypatch):
    """``a = [a, a]`` nested 30 times in the model states (a 2 KB file): the plain values
    DeepSpeed saved are taken with one conversion per object, not one per path."""
    from collections import OrderedDict

    from ckpt_inspector.core.layouts import _deepspeed_files

    a: list = [0]
    for _ in range(30):
        a = [a, a]
    (tmp_path / "global_step1").mkdir()
    (tmp_path / "latest").write_text("global_step1")
    torch.save({"module": OrderedDict(), "client": a},
               tmp_path / "global_step1" / "mp_rank_00_model_states.pt")
    calls = []
    convert = _deepspeed_files._Plain._convert

    def counted(self, value, depth):
        calls.append(depth)
        return convert(self, value, depth)

    monkeypatch.setattr(_deepspeed_files._Plain, "_convert", counted)
    ckpt = open_checkpoint(tmp_path)
    assert ckpt.format == "deepspeed-zero"
    assert len(calls) < 100  # 31 lists, the dict and the OrderedDict: once each
    assert sum(1 for _ in ckpt.root.walk()) < 25_000
    assert any("same object" in w for w in ckpt.warnings)

# -- hostile files: the work is bounded by what is stored, not by the numbers in it ---------
def _hostile(torch, root, stage, world, shapes, flats, ranks=(0,)):
    """A tag folder whose files claim ``world`` ranks and ``shapes`` (one group) but hold
    only ``ranks``' files, each rank's flat partition from ``flats[r]``."""
    from collections import OrderedDict

    tag = root / "global_step1"
    tag.mkdir(parents=True)
    (root / "latest").write_text("global_step1")
    key = "fp32_flat_groups" if stage == 3 else "single_partition_of_fp32_groups"
    for r in ranks:
        osd = {"zero_stage": stage, "partition_count": world, key: [flats[r]]}
        torch.save({"optimizer_state_dict": osd},
                   tag / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
        if stage == 3 or r == 0:
            name = (f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" if stage == 3
                    else "mp_rank_00_model_states.pt")
            torch.save({"module": OrderedDict(), "param_shapes": [OrderedDict(shapes)],
                        "dp_world_size": world, "buffer_names": []}, tag / name)
    return root


def _pieces(ckpt):
    return sum(len(i.pieces or ()) for i in _model(ckpt).values())


@pytest.mark.parametrize("stage", [2, 3])
def test_a_claimed_rank_count_does_not_multiply_the_work(torch, tmp_path, stage):
    """100,000 ranks claimed, 2 files there, 200 parameters, and rank 0's partition an
    expanded tensor claiming 10**9 elements over 4 bytes: was a per-rank record of every
    parameter (500 MB for 10,000 ranks) and a quadratic sort (193 s)."""
    import tracemalloc

    world = 100_000
    shapes = [(f"p{i}", (world,)) for i in range(200)]
    root = _hostile(torch, tmp_path / "z", stage, world, shapes,
                    {0: torch.zeros(1).expand(10**9)})
    tracemalloc.start()
    try:
        ckpt = open_checkpoint(root)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 150 << 20, peak  # a stand-in per missing rank was gone long before
    missing = [w for w in ckpt.warnings if "rank files missing" in w]
    assert len(missing) == 1 and "100,000 ranks" in missing[0]
    assert not [w for w in ckpt.warnings if w.endswith("is shown damaged")]  # no per-file one
    assert len(ckpt.files) <= 3  # latest and the two files there, not one per missing rank
    model = _model(ckpt)
    assert len(model) == 200 and all(i.problem for i in model.values())
    assert _pieces(ckpt) <= 200  # at most a piece each, not one per claimed rank


def test_a_partition_claiming_more_than_its_bytes_makes_no_pieces(torch, tmp_path):
    """Rank 0's flat partition is 10**9 elements over a 4-byte storage; rank 2 is missing
    (a stand-in sized like the valid rank 1's): the parameters in it are damaged, naming
    why, and those of rank 1 are read."""
    flats = {0: torch.zeros(1).expand(10**9), 1: torch.arange(8.0)}
    shapes = [("a", (10**9 - 2,)), ("b", (2,)), ("c", (8,)), ("d", (3,))]
    root = _hostile(torch, tmp_path / "z", 2, 3, shapes, flats, ranks=(0, 1))
    ckpt = open_checkpoint(root)
    model = _model(ckpt)
    assert "not a contiguous tensor" in model["a"].problem
    assert "not a contiguous tensor" in model["b"].problem
    assert model["c"].problem is None
    assert torch.equal(to_torch(model["c"]), torch.arange(8.0))
    assert "zero_pp_rank_2_mp_rank_00_optim_states.pt is missing" in model["d"].problem
    assert _pieces(ckpt) <= 6


def test_pieces_past_the_limit_are_damaged_with_one_warning(made, monkeypatch):
    from ckpt_inspector.core.layouts import deepspeed

    monkeypatch.setattr(deepspeed, "MAX_PIECES", 7)
    ckpt = open_checkpoint(made[(3, 3)])
    over = [w for w in ckpt.warnings if "over 7 pieces" in w]
    assert len(over) == 1
    model = {k: i for k, i in _model(ckpt).items() if k not in zero_files.SHARED}
    assert sum(len(i.pieces or ()) for i in model.values() if not i.problem) <= 7
    assert [k for k, i in model.items() if i.problem and "over 7 pieces" in i.problem]
    assert [k for k, i in model.items() if i.problem is None and i.pieces]


@pytest.mark.parametrize("stage", [2, 3])
def test_a_huge_shape_is_one_damaged_tensor_not_an_overflow(torch, tmp_path, stage):
    """``math.ceil(x / y)`` raised OverflowError on a shape of 10**400 elements."""
    shapes = [("ok", (4,)), ("huge", (10**200, 10**200)), ("after", (2,))]
    root = _hostile(torch, tmp_path / "z", stage, 1, shapes, {0: torch.arange(8.0)})
    ckpt = open_checkpoint(root)
    model = _model(ckpt)
    assert torch.equal(to_torch(model["ok"]), torch.arange(4.0))
    huge = model["huge"]
    assert "about 10^400 elements" in huge.problem and huge.numel == 0  # counts nothing
    assert model["after"].problem  # its offset lies past the huge one
    assert scan(ckpt).verdict == "safe"


@pytest.mark.parametrize("name", ["mp_rank_01_model_states.pt",
                                  "zero_pp_rank_0_mp_rank_01_optim_states.pt"])
def test_a_payload_in_another_model_parallel_ranks_file_is_dangerous(torch, tmp_path, name):
    """Was (red team): the files of model-parallel ranks above 0 were not read at all
    (zero_to_fp32.py rebuilds rank 0), so a payload there left the folder 'safe', while
    DeepSpeed's load_checkpoint torch.loads it on that rank."""
    from support import Payload

    marker = tmp_path / "marker"
    root = zero_files.save(torch, tmp_path / "mp", 2, 1)
    torch.save({"module": {}, "x": Payload(f"touch {marker}")},
               root / zero_files.TAG / name)
    ckpt = open_checkpoint(root)
    report = scan(ckpt)
    assert report.verdict == "dangerous"
    assert {f.file for f in report.findings if f.severity == "dangerous"} == {
        f"{zero_files.TAG}/{name}"}
    assert name.removesuffix(".pt") in {str(n.key) for n in ckpt.root.children}
    assert all(i.problem is None for i in _model(ckpt).values())
    assert not marker.exists()


def test_a_payload_in_an_experts_file_is_dangerous(torch, tmp_path):
    """A mixture of experts' layer_0_expert_0_mp_rank_00_model_states.pt, which DeepSpeed
    torch.loads beside the model states, was never read."""
    from support import Payload

    marker = tmp_path / "marker"
    root = zero_files.save(torch, tmp_path / "moe", 2, 1)
    name = "layer_0_expert_0_mp_rank_00_model_states.pt"
    torch.save({"x": Payload(f"touch {marker}")}, root / zero_files.TAG / name)
    report = scan(open_checkpoint(root))
    assert report.verdict == "dangerous"
    assert {f.file for f in report.findings if f.severity == "dangerous"} == {
        f"{zero_files.TAG}/{name}"}
    assert not marker.exists()
