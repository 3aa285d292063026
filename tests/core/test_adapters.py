"""LoRA adapters (``core/adapters``, the ``peft-adapter`` layout): rank, alpha and scale per
module as PEFT and kohya compute them, and the effective update ``scale · B @ A`` with its
statistics, checked against PEFT itself (where it is installed) and against numpy."""

from __future__ import annotations

import json
import math
import re
import time

import numpy as np
import pytest

from ckpt_inspector.core import open_checkpoint
from ckpt_inspector.core.adapters import find_adapter, module_groups
from ckpt_inspector.core.adapters.build import _pattern
from ckpt_inspector.core.ops.histogram import histogram
from ckpt_inspector.core.ops.stats import compute
from ckpt_inspector.core.progress import run
from ckpt_inspector.core.scan import scan
from ckpt_inspector.core.tensors import to_numpy

from adapter_files import (
    KOHYA_MODULES,
    PEFT_MODULES,
    PREFIX,
    expected_peft,
    kohya_file,
    peft_by_hand,
    update_of,
)
from support import Payload


def _stats_match(stats, ref: np.ndarray) -> None:
    """Our statistics of an update equal numpy's of the reference (float64)."""
    ref = ref.astype(np.float64).ravel()
    tol = 1e-5 * float(np.abs(ref).max())  # the update is computed in float32
    assert stats.numel == ref.size and stats.finite == ref.size
    assert stats.min == pytest.approx(ref.min(), abs=tol)
    assert stats.max == pytest.approx(ref.max(), abs=tol)
    assert stats.mean == pytest.approx(ref.mean(), abs=tol)
    assert stats.std == pytest.approx(ref.std(), rel=1e-5)
    assert stats.abs_mean == pytest.approx(np.abs(ref).mean(), rel=1e-5)
    assert stats.l2 == pytest.approx(float(np.linalg.norm(ref)), rel=1e-5)


# -- PEFT, written by PEFT -------------------------------------------------------------------
@pytest.fixture(scope="module")
def peft_made(torch, tmp_path_factory):
    """An adapter saved by PEFT's own ``save_pretrained``: linear layers, a 3×3 convolution,
    an embedding, GPT-2's Conv1D (fan_in_fan_out), rank_pattern / alpha_pattern, rsLoRA and
    modules_to_save; and the PEFT model, whose layers say what PEFT computes."""
    peft = pytest.importorskip("peft")
    from transformers.pytorch_utils import Conv1D

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(40, 12)
            self.layers = torch.nn.ModuleList(torch.nn.ModuleDict(
                {"q_proj": torch.nn.Linear(12, 16), "v_proj": torch.nn.Linear(12, 16)})
                for _ in range(3))
            self.conv = torch.nn.Conv2d(4, 6, 3)
            self.head = torch.nn.Linear(16, 5)

    class Gpt2ish(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = Conv1D(18, 12)  # weight [in, out]: PEFT's fan_in_fan_out

    torch.manual_seed(3)
    folder = tmp_path_factory.mktemp("peft-made")
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "conv", "emb"],
        rank_pattern={"layers.1.q_proj": 2}, alpha_pattern={"v_proj": 3},
        modules_to_save=["head"], use_rslora=True, init_lora_weights=False)
    model = peft.get_peft_model(Toy(), config)
    model.save_pretrained(folder / "toy")
    gpt = peft.get_peft_model(Gpt2ish(), peft.LoraConfig(
        r=3, lora_alpha=6, target_modules=["c_attn"], fan_in_fan_out=True,
        init_lora_weights=False))
    gpt.save_pretrained(folder / "gpt")
    return folder, model, gpt


def _peft_layers(model):
    """module name as saved -> the PEFT layer (with ``r``, ``lora_alpha``, ``scaling``)."""
    return {f"base_model.model.{name}": mod for name, mod in
            model.base_model.model.named_modules() if hasattr(mod, "get_delta_weight")}


def test_peft_adapter_as_peft_computes_it(peft_made):
    folder, model, gpt = peft_made
    for sub, peft_model in (("toy", model), ("gpt", gpt)):
        layers = _peft_layers(peft_model)
        adapter_dir = folder / sub
        for opened in (adapter_dir, adapter_dir / "adapter_config.json",
                       adapter_dir / "adapter_model.safetensors"):
            ckpt = open_checkpoint(opened)
            assert ckpt.format == ("safetensors" if opened.suffix == ".safetensors"
                                   else "peft-adapter")
            assert scan(ckpt).verdict == "safe"
            adapter = find_adapter(ckpt)
            assert adapter is not None and adapter.kind == "peft"
            assert adapter.naming == "peft"
            assert {m.name for m in adapter.modules} == set(layers)
            for m in adapter.modules:
                layer = layers[m.name]
                assert m.rank == layer.r["default"]
                assert m.alpha == layer.lora_alpha["default"]
                assert m.scale == pytest.approx(layer.scaling["default"], rel=1e-12)
                delta = layer.get_delta_weight("default").detach().double().numpy()
                assert m.update_shape == delta.shape
                update = to_numpy(adapter.update_tensor(m))
                np.testing.assert_allclose(update, delta, atol=1e-6 * np.abs(delta).max())
        if sub == "toy":
            assert adapter.other_tensors == ["base_model.model.head.bias",
                                             "base_model.model.head.weight"]
            assert adapter.config["use_rslora"] is True
            kinds = {m.name.rsplit(".", 1)[-1]: m.kind for m in adapter.modules}
            assert kinds["conv"] == "conv" and kinds["emb"] == "embedding"
        else:
            [m] = adapter.modules
            assert m.transposed and m.update_shape == (12, 18)  # Conv1D's [in, out]


def test_peft_pattern_rule_is_peft_own(peft_made):
    """rank_pattern / alpha_pattern keys match module names as PEFT's get_pattern_key does."""
    from peft.utils.other import get_pattern_key

    patterns = {"q_proj": 1, "layers.1.q_proj": 2, r"layers\.[0-3]\.v_proj": 3, "proj": 4,
                "^model.layers.0.mlp": 5, r"model.layers.\d+.self_attn.(q|k)_proj": 6,
                "v_proj|o_proj": 7, "[": 8}
    names = ["model.layers.0.self_attn.q_proj", "layers.1.q_proj", "model.layers.2.v_proj",
             "model.layers.12.v_proj", "xq_proj", "model.layers.0.mlp", "a.proj", "proj",
             "model.layers_1_q_proj", "model.layers.31.self_attn.k_proj", "b.o_proj"]
    for name in names:
        for order in (list(patterns), list(reversed(patterns))):
            ours = _pattern(dict.fromkeys(order, 1), name, [])
            valid = [p for p in order if p != "["]  # PEFT raises re.error on it; we skip it
            theirs = get_pattern_key(valid, name)
            assert (ours if ours is not None else name) == theirs, (name, order)


def test_hostile_patterns_are_skipped_not_matched(tmp_path, torch):
    """A config's patterns are regular expressions from the file: those that could take
    exponential time on a name that almost matches are skipped (with a note), at once."""
    from safetensors.torch import save_file

    name = "a" * 60 + "x"
    save_file({f"base_model.model.{name}.lora_A.weight": torch.ones(2, 4),
               f"base_model.model.{name}.lora_B.weight": torch.ones(4, 2)},
              str(tmp_path / "adapter_model.safetensors"))
    evil = {"(a|aa)+$": 1, "(a+)+": 1, ".*.*.*.*y": 1, "(": 1}
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"r": 2, "lora_alpha": 4, "rank_pattern": evil, "alpha_pattern": evil}))
    start = time.perf_counter()
    adapter = find_adapter(open_checkpoint(tmp_path))
    assert time.perf_counter() - start < 5
    [m] = adapter.modules
    assert (m.rank, m.alpha, m.scale) == (2, 4, 2)
    assert sum("is not used" in n for n in adapter.notes) == 3
    assert any("not a regular expression" in n for n in adapter.notes)


# -- PEFT's files, written without PEFT ------------------------------------------------------
@pytest.fixture(scope="module")
def by_hand(torch, tmp_path_factory):
    folder = tmp_path_factory.mktemp("peft-by-hand") / "adapter"
    return folder, peft_by_hand(torch, folder)


def test_peft_files_rank_alpha_scale_and_updates(by_hand):
    folder, arrays = by_hand
    adapter = find_adapter(open_checkpoint(folder))
    assert adapter.kind == "peft" and adapter.base_model == "toy/base-model"
    assert adapter.config_file == "adapter_config.json"
    expected = expected_peft()
    got = {m.name: (m.rank, m.alpha, m.scale) for m in adapter.modules}
    assert got == expected  # exact: every scale here is a power of two
    assert adapter.module_named(PREFIX + "model.conv").alpha_from == "lora_alpha"
    assert adapter.module_named(PREFIX + "model.layers.0.self_attn.v_proj.lora_B.weight"
                                ).alpha_from == "alpha_pattern 'v_proj'"
    assert adapter.other_tensors == [PREFIX + "lm_head.weight"] and not adapter.notes
    summary = adapter.to_json()
    assert summary["rank"]["counts"] == {"4": 7, "2": 1}
    assert json.loads(json.dumps(summary)) == summary  # plain JSON
    for m in adapter.modules:
        info = adapter.update_tensor(m)
        assert adapter.update_tensor(m) is info  # one object: results computed are kept
        ref = update_of(arrays, m.name, m.scale)
        assert info.shape == ref.shape
        stats = run(compute(info))
        _stats_match(stats, ref)
        hist = run(histogram(info, stats, 16))
        assert hist.counts.sum() == ref.size
        np.testing.assert_allclose(to_numpy(info), ref, atol=1e-5 * np.abs(ref).max())


def test_bfloat16_rslora_and_a_bin_read_without_loading(torch, tmp_path):
    config = {**__import__("adapter_files").PEFT_CONFIG, "use_rslora": True}
    arrays = peft_by_hand(torch, tmp_path / "bf16", config, torch.bfloat16)
    adapter = find_adapter(open_checkpoint(tmp_path / "bf16"))
    m = adapter.module_named(PREFIX + "model.layers.1.self_attn.q_proj")
    assert (m.rank, m.alpha, m.scale) == (2, 8, pytest.approx(8 / math.sqrt(2)))
    info = adapter.update_tensor(m)
    assert info.dtype == "float32"
    _stats_match(run(compute(info)), update_of(arrays, m.name, m.scale))
    # adapter_model.bin: interpreted by the pickle reader, never unpickled by Python
    marker = tmp_path / "PWNED-marker"
    peft_by_hand(torch, tmp_path / "bin", fmt="bin")
    sd = torch.load(tmp_path / "bin" / "adapter_model.bin", weights_only=True)
    sd["extra"] = Payload(f"touch {marker}")
    torch.save(sd, tmp_path / "bin" / "adapter_model.bin")
    ckpt = open_checkpoint(tmp_path / "bin")
    assert ckpt.format == "peft-adapter" and scan(ckpt).verdict == "dangerous"
    adapter = find_adapter(ckpt)
    assert len(adapter.modules) == len(PEFT_MODULES)
    for m in adapter.modules:
        run(compute(adapter.update_tensor(m)))
    assert not marker.exists()


def test_a_large_update_in_chunks_on_several_threads(torch, tmp_path):
    """An update of 9M elements: statistics over rows computed a block at a time (and split
    among threads), never the whole matrix, equal numpy's."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(8, 2304, generator=g), torch.randn(4000, 8, generator=g) / 10
    folder = tmp_path / "big"
    folder.mkdir()
    save_file({"base_model.model.proj.lora_A.weight": a, "base_model.model.proj.lora_B.weight":
               b}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 4}))
    adapter = find_adapter(open_checkpoint(folder))
    [m] = adapter.modules
    info = adapter.update_tensor(m)
    stats = run(compute(info))
    assert not info.storage.source.ready  # nothing kept: computed a block at a time
    _stats_match(stats, 0.5 * (b.double().numpy() @ a.double().numpy()))


# -- kohya / sd-scripts ----------------------------------------------------------------------
def test_kohya_alpha_from_tensors_and_metadata(torch, tmp_path):
    arrays = kohya_file(torch, tmp_path / "style.safetensors")
    ckpt = open_checkpoint(tmp_path / "style.safetensors")
    adapter = find_adapter(ckpt)
    assert (adapter.kind, adapter.naming) == ("lora", "kohya")
    assert adapter.base_model == "v1-5-pruned-emaonly.safetensors"
    assert adapter.config["ss_network_alpha"] == "2.0"  # kohya writes strings
    assert not adapter.other_tensors and not adapter.unpaired
    sources = {}
    for m in adapter.modules:
        down, up, _tensor, alpha, scale = KOHYA_MODULES[m.name]
        assert m.rank == down[0] and m.alpha == alpha and m.scale == scale
        assert m.update_shape == (up[0], *down[1:])
        sources[m.name] = m.alpha_from
        _stats_match(run(compute(adapter.update_tensor(m))), update_of(arrays, m.name, scale))
    assert sorted(sources.values()) == ["ss_network_alpha", "ss_network_args conv_alpha",
                                        "tensor", "tensor"]
    # without metadata, the modules without an alpha tensor take alpha = rank
    kohya_file(torch, tmp_path / "bare.safetensors", torch.float32, metadata={})
    bare = find_adapter(open_checkpoint(tmp_path / "bare.safetensors"))
    conv = bare.module_named("lora_unet_down_blocks_0_resnets_0_conv1")
    assert (conv.alpha, conv.scale, conv.alpha_from) == (4, 1, "rank (no alpha given)")


# -- other namings and what does not pair ----------------------------------------------------
def test_diffusers_namings_lone_halves_and_bad_pairs(torch, tmp_path):
    from safetensors.torch import save_file

    t = torch.ones
    save_file({
        "unet.mid.attn.to_q.lora.down.weight": t(2, 8), "unet.mid.attn.to_q.lora.up.weight":
            t(8, 2),
        "unet.mid.processor.to_k_lora.down.weight": t(2, 8),
        "unet.mid.processor.to_k_lora.up.weight": t(8, 2),
        "te.q.lora_linear_layer.down.weight": t(2, 8), "te.q.lora_linear_layer.up.weight":
            t(8, 2),
        "te.q.alpha": torch.tensor(1.5, dtype=torch.bfloat16),
        "d.lora_A.weight": t(2, 8), "d.lora_B.weight": t(8, 2),
        "d.alpha": torch.tensor(6.0, dtype=torch.float64),
        "lonely.lora_A.weight": t(2, 8),  # no lora_B
        "bad.lora_A.weight": t(2, 8), "bad.lora_B.weight": t(8, 3),  # ranks disagree
        "tucker.lora_down.weight": t(2, 8, 1, 1), "tucker.lora_mid.weight": t(2, 2, 3, 3),
        "tucker.lora_up.weight": t(8, 2, 1, 1),
    }, str(tmp_path / "mixed.safetensors"))
    adapter = find_adapter(open_checkpoint(tmp_path / "mixed.safetensors"))
    by_name = {m.name: m for m in adapter.modules}
    assert set(by_name) == {"unet.mid.attn.to_q", "unet.mid.processor.to_k", "te.q", "bad",
                            "tucker", "d"}
    assert by_name["te.q"].alpha == 1.5 and by_name["te.q"].scale == 0.75  # bfloat16 alpha
    assert by_name["d"].alpha == 6.0 and by_name["d"].scale == 3.0  # float64 alpha
    assert by_name["unet.mid.attn.to_q"].scale == 1.0  # no alpha: alpha = rank
    assert adapter.unpaired == ["lonely.lora_A.weight"]
    for name in ("bad", "tucker"):
        assert by_name[name].problem and by_name[name].update_shape is None
        with pytest.raises(ValueError):
            adapter.update_tensor(by_name[name])
    assert "lora_mid" in by_name["tucker"].problem
    assert any("no partner" in n for n in adapter.notes)


def test_not_an_adapter(tensors_file, torch, tmp_path):
    assert find_adapter(open_checkpoint(tensors_file[0])) is None
    torch.save({"lora_A": torch.ones(2), "x.lora_B.weight": torch.ones(2, 2)},
               tmp_path / "no_pairs.pt")
    assert find_adapter(open_checkpoint(tmp_path / "no_pairs.pt")) is None


def test_module_groups_fold_layer_numbers(by_hand):
    adapter = find_adapter(open_checkpoint(by_hand[0]))
    groups = [(g.pattern, len(g.modules)) for g in module_groups(adapter.modules, PREFIX)]
    assert groups == [("model.conv", 1), ("model.embed_tokens", 1),
                      ("model.layers.{0,2}.self_attn.q_proj", 2),
                      ("model.layers.0–2.self_attn.v_proj", 3),
                      ("model.layers.1.self_attn.q_proj", 1)]
    assert all(re.match(r"^[\w.{},–]+$", p) for p, _n in groups)


def test_an_enormous_update_is_not_held_whole(tmp_path, torch):
    """Two small factors can describe an update of 40 billion elements: the views' whole
    copy is refused at once (statistics would still go a block at a time)."""
    from safetensors.torch import save_file

    from ckpt_inspector.core.adapters.update import prepare
    from ckpt_inspector.core.errors import CheckpointError

    save_file({"m.lora_A.weight": torch.ones(1, 200_000), "m.lora_B.weight":
               torch.ones(200_000, 1)}, str(tmp_path / "huge.safetensors"))
    adapter = find_adapter(open_checkpoint(tmp_path / "huge.safetensors"))
    info = adapter.update_tensor(adapter.modules[0])
    assert info.numel == 40_000_000_000
    with pytest.raises(CheckpointError, match="too large to hold whole"):
        run(prepare(info))
    values = next(iter(info.storage.source.blocks(0, 4 << 20)))  # a block: computed rows
    assert np.frombuffer(values, np.float32).max() == 1.0


def test_a_sharded_adapter_with_its_index(tmp_path, torch):
    """``adapter_model-0000K-of-0000N.safetensors`` with ``adapter_model.safetensors.index.json``
    beside ``adapter_config.json`` opens as one adapter (and not as the base model a
    ``model.safetensors`` in the same folder would be)."""
    from adapter_files import PEFT_CONFIG, peft_tensors
    from shards import save_sharded

    folder = tmp_path / "sharded-adapter"
    sd = peft_tensors(torch)
    save_sharded(torch, folder, sd, prefix="adapter_model")
    (folder / "adapter_config.json").write_text(json.dumps(PEFT_CONFIG))
    save_sharded(torch, folder, {"other.weight": torch.ones(2)}, shards=1, index=False)
    ckpt = open_checkpoint(folder)
    assert ckpt.format == "peft-adapter" and ckpt.metadata["index"].startswith("adapter_model")
    assert {f["path"] for f in ckpt.files} >= {"adapter_model.safetensors.index.json"}
    adapter = find_adapter(ckpt)
    assert {m.name: (m.rank, m.alpha, m.scale) for m in adapter.modules} == expected_peft()
