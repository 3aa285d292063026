"""``totals.memory`` (core/memory.py): bytes as saved, as float16/bfloat16, and a training
checkpoint's weights and optimizer state, on files saved here with torch, safetensors, gguf
and DCP; every figure computed again from the saved objects themselves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ckpt_inspector.core.layouts import open_checkpoint
from ckpt_inspector.core.memory import memory_totals, sizes
from ckpt_inspector.core.summary import totals
from ckpt_inspector.core.tree import Checkpoint, Node, StorageInfo, TensorInfo

torch = pytest.importorskip("torch")


def memory_of(path: Path) -> dict:
    return totals(open_checkpoint(os.fspath(path)))["memory"]


def tensors_in(value) -> list:
    """Every tensor in a saved object, in no particular order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors_in(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors_in(v)]
    return []


def saved_bytes(tensors: list) -> int:
    """Bytes of the distinct storages the tensors use (what torch.load allocates)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def half_bytes(tensors: list) -> int:
    """Bytes after ``.half()`` of each floating-point tensor (others as they are), a
    storage shared by several counted once."""
    seen = {}
    for t in tensors:
        ptr = t.untyped_storage().data_ptr()
        n = t.untyped_storage().nbytes() // t.element_size()
        seen[ptr] = n * 2 if t.is_floating_point() else n * t.element_size()
    return sum(seen.values())


def figures(tensors: list) -> dict:
    return {"tensors": len(tensors), "saved": saved_bytes(tensors),
            "float16": half_bytes(tensors), "bfloat16": half_bytes(tensors)}


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                               torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 5))


def adam_after_one_step(net):
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    return opt


def test_state_dict_in_float32(tmp_path):
    sd = model().state_dict()  # float32 weights, BatchNorm's int64 num_batches_tracked
    torch.save(sd, tmp_path / "sd.pt")
    mem = memory_of(tmp_path / "sd.pt")
    ts = list(sd.values())
    assert any(t.dtype == torch.int64 for t in ts)
    expect = figures(ts)
    assert mem["saved"] == expect["saved"] == sum(t.numel() * 4 if t.is_floating_point()
                                                  else t.numel() * 8 for t in ts)
    assert mem["float16"] == mem["bfloat16"] == expect["float16"]
    assert mem["weights"] == expect
    assert mem["optimizer"] is None and mem["other"] is None


def test_training_checkpoint_with_adam(tmp_path):
    net = model()
    opt = adam_after_one_step(net)
    osd = opt.state_dict()
    sd = net.state_dict()
    torch.save({"epoch": 1, "model_state_dict": sd, "optimizer_state_dict": osd,
                "loss": 0.25}, tmp_path / "train.pt")
    mem = memory_of(tmp_path / "train.pt")
    opt_ts = tensors_in(osd)
    assert {"exp_avg", "exp_avg_sq", "step"} <= set(osd["state"][0])
    assert mem["optimizer"] == figures(opt_ts)
    assert mem["weights"] == figures(list(sd.values()))
    assert mem["other"] is None
    assert mem["saved"] == saved_bytes(opt_ts + list(sd.values()))
    assert mem["optimizer_share"] == round(saved_bytes(opt_ts) / mem["saved"], 4)
    assert 0.6 < mem["optimizer_share"] < 0.7  # Adam keeps two moments per weight


def test_lightning_checkpoint(tmp_path):
    """Lightning's layout: the weights under ``state_dict``, Adam under
    ``optimizer_states``; an EMA copy kept by a callback is neither."""
    net = model()
    osd = adam_after_one_step(net).state_dict()
    sd = net.state_dict()
    ema = {k: v.detach().clone() for k, v in sd.items()}
    torch.save({"epoch": 2, "global_step": 10, "pytorch-lightning_version": "2.4.0",
                "state_dict": sd, "optimizer_states": [osd], "lr_schedulers": [],
                "callbacks": {"EMA": {"ema_weights": ema}},
                "hyper_parameters": {"lr": 1e-3}}, tmp_path / "epoch=2.ckpt")
    mem = memory_of(tmp_path / "epoch=2.ckpt")
    assert mem["weights"] == figures(list(sd.values()))
    assert mem["optimizer"] == figures(tensors_in(osd))
    assert mem["other"] == figures(list(ema.values()))
    everything = list(sd.values()) + tensors_in(osd) + list(ema.values())
    assert mem["saved"] == saved_bytes(everything)
    assert mem["float16"] == half_bytes(everything)


def test_optimizer_file_alone(tmp_path):
    """``optimizer.pt`` as the Hugging Face Trainer saves it: one optimizer's state_dict."""
    osd = adam_after_one_step(model()).state_dict()
    torch.save(osd, tmp_path / "optimizer.pt")
    mem = memory_of(tmp_path / "optimizer.pt")
    assert mem["optimizer"] == figures(tensors_in(osd))
    assert mem["weights"]["tensors"] == 0 and mem["optimizer_share"] == 1.0


def test_safetensors_in_bfloat16(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    sd = {k: v.to(torch.bfloat16) for k, v in model().state_dict().items()
          if v.is_floating_point()}
    sd["ids"] = torch.arange(7, dtype=torch.int32)
    save_file(sd, tmp_path / "m.safetensors")
    mem = memory_of(tmp_path / "m.safetensors")
    floats = sum(t.numel() for t in sd.values() if t.is_floating_point())
    assert mem["saved"] == floats * 2 + 7 * 4 == saved_bytes(list(sd.values()))
    assert mem["float16"] == mem["bfloat16"] == mem["saved"]  # already half: no change


def test_tied_weights_and_views_count_their_storage_once(tmp_path):
    base = torch.arange(100, dtype=torch.float32)
    obj = {"embed": base, "lm_head": base, "first_ten": base[:10], "w": torch.ones(4, 4)}
    torch.save(obj, tmp_path / "tied.pt")
    mem = memory_of(tmp_path / "tied.pt")
    assert mem["saved"] == 100 * 4 + 16 * 4 == saved_bytes(list(obj.values()))
    assert mem["float16"] == 100 * 2 + 16 * 2


def test_view_saved_alone_holds_its_whole_storage(tmp_path):
    big = torch.zeros(1000, dtype=torch.float64)
    torch.save({"head": big[:3]}, tmp_path / "view.pt")
    mem = memory_of(tmp_path / "view.pt")
    assert mem["saved"] == 8000 and mem["float16"] == 2000


def test_gguf_quantized_types(tmp_path):
    """A ggml block type takes its blocks as saved; cast, each element 2 bytes."""
    gguf = pytest.importorskip("gguf")
    from gguf_files import write_gguf

    path = write_gguf(tmp_path / "m.gguf")
    reader = gguf.GGUFReader(os.fspath(path))
    mem = memory_of(path)
    assert mem["saved"] == sum(int(t.n_bytes) for t in reader.tensors)
    assert mem["float16"] == sum(int(t.n_elements) * 2 for t in reader.tensors)
    assert any(t.tensor_type.name == "Q4_K" for t in reader.tensors)


def test_dcp_folder(tmp_path):
    import dcp_files

    sd = dcp_files.state_dict(torch)
    dcp_files.save(torch, tmp_path / "ckpt", sd)
    mem = memory_of(tmp_path / "ckpt")
    assert mem["weights"] == figures(list(sd["model"].values()))
    assert mem["optimizer"] == figures(tensors_in(sd["optim"]["state"]))
    assert mem["other"] is None


def test_deepspeed_zero_weights_are_not_counted_twice(tmp_path):
    """The fp32 model is gathered from the optimizer's partitions: ``weights`` is what the
    consolidated model takes, ``saved`` what the files hold."""
    import zero_files

    root = zero_files.save(torch, tmp_path / "ds", 2, 2, half=torch.bfloat16)
    mem = memory_of(root)
    weights = zero_files.expected(torch)
    for name in zero_files.FROZEN:  # not trained: saved as the module's bfloat16 copy
        weights[name] = weights[name].to(torch.bfloat16)
    assert mem["weights"] == figures(list(weights.values()))  # tied.weight once
    files = sorted((root / zero_files.TAG).glob("*.pt"))
    with zero_files.deepspeed_names():
        saved = {f.name: torch.load(f, weights_only=False) for f in files}  # our own files
    optim = [t for name, v in saved.items() if "optim_states" in name for t in tensors_in(v)]
    models = [t for name, v in saved.items() if "model_states" in name for t in tensors_in(v)]
    assert mem["optimizer"] == figures(optim)
    assert mem["other"] == figures(models)
    assert mem["saved"] == saved_bytes(optim) + saved_bytes(models)
    assert "note" in mem


def test_damaged_and_storage_less_tensors_take_the_slow_path():
    """Tensors the fast path refuses (no storage, a problem, unknown dtype) are counted
    one by one: their own bytes, nothing for an unknown shape."""
    plain = TensorInfo("float32", (4,), storage=StorageInfo("0", "float32", 4, "cpu"))
    damaged = TensorInfo("unknown", (), problem="file missing")
    assert sizes([plain, damaged]) == (16, 8)
    root = Node("dict")
    for key, t in (("a", plain), ("b", damaged)):
        root.add(Node("tensor", key, tensor=t))
    mem = memory_totals(Checkpoint("x", "safetensors", root), list(root.children))
    assert (mem["saved"], mem["float16"], mem["weights"]["tensors"]) == (16, 8, 2)


def test_a_value_named_optimizer_is_not_optimizer_state(tmp_path):
    torch.save({"optimizer": "adam", "weights": torch.ones(3)}, tmp_path / "x.pt")
    assert memory_of(tmp_path / "x.pt")["optimizer"] is None


def test_sums_by_dtype_and_tensor_by_tensor_agree(tmp_path):
    """``totals`` hands its sums by dtype to memory_totals for plain files: the same
    figures as counting tensor by tensor, on every dtype torch saves."""
    names = ["float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
             "complex64", "complex128", "int64", "int32", "int16", "int8", "uint8", "bool"]
    torch.save({n: torch.zeros(3, 2, dtype=getattr(torch, n)) for n in names},
               tmp_path / "dtypes.pt")
    torch.save(model().state_dict(), tmp_path / "sd.pt")
    for name in ("dtypes.pt", "sd.pt"):
        ckpt = open_checkpoint(os.fspath(tmp_path / name))
        nodes = [n for n in ckpt.root.walk() if n.kind == "tensor"]
        tot = totals(ckpt, nodes)
        by_dtype = memory_totals(ckpt, nodes, None, tot["by_dtype"])
        one_by_one = memory_totals(ckpt, nodes)
        assert by_dtype == one_by_one == tot["memory"], name
