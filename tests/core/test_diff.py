"""Comparing checkpoints: the cases people meet, checked against torch's own arithmetic."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from ckpt_inspector.core import open_checkpoint
from ckpt_inspector.core.ops import diff as d
from ckpt_inspector.core.ops import tensor_diff
from ckpt_inspector.core.progress import Cancelled

from support import ROOT, drive, run_cli


def compare(a, b, **kw):
    return drive(d.diff(open_checkpoint(a), open_checkpoint(b), **kw))


def by_key(result):
    return {e.key: e for e in result.entries}


@pytest.fixture(scope="module")
def family(torch, resnet18, tmp_path_factory):
    """A resnet18 state_dict and its relatives, as a user would have them on disk."""
    import torchvision

    folder = tmp_path_factory.mktemp("diff")
    sd = resnet18.state_dict()
    paths = {"base": folder / "base.pt", "copy": folder / "copy.pt"}
    torch.save(sd, paths["base"])
    torch.save({k: v.clone() for k, v in sd.items()}, paths["copy"])
    tuned = {k: v.clone() for k, v in sd.items()}
    # noise that never rounds away (every element changes), the same on every run
    gen = torch.Generator().manual_seed(0)
    tuned["fc.weight"] += 0.01 + 0.01 * torch.rand(tuned["fc.weight"].shape, generator=gen)
    tuned["fc.bias"][3] = 5.0
    tuned["layer4.1.bn2.running_var"][0] = float("nan")
    paths["tuned"] = folder / "tuned.pt"
    torch.save(tuned, paths["tuned"])
    paths["dp"] = folder / "dp.pt"
    torch.save({f"module.{k}": v for k, v in sd.items()}, paths["dp"])
    paths["half"] = folder / "half.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in sd.items()},
               paths["half"])
    paths["r34"] = folder / "r34.pt"
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), paths["r34"])
    paths["train"] = folder / "train.ckpt"
    torch.save({"epoch": 7, "model_state_dict": sd, "loss": 0.25}, paths["train"])
    paths["train9"] = folder / "train9.ckpt"
    torch.save({"epoch": 9, "model_state_dict": tuned, "loss": 0.125}, paths["train9"])
    return paths, sd, tuned


def test_identical_files(family):
    paths, sd, _ = family
    result = compare(paths["base"], paths["copy"])
    assert result.identical and result.counts()[d.IDENTICAL] == len(sd)
    assert result.rules == [] and result.params_changed() == 0
    assert compare(paths["base"], paths["base"]).identical  # a file against itself


def test_fine_tuned_copy_against_torch(torch, family):
    paths, sd, tuned = family
    result = compare(paths["base"], paths["tuned"])
    entries = by_key(result)
    changed = {k for k, e in entries.items() if e.status != d.IDENTICAL}
    assert changed == {"fc.weight", "fc.bias", "layer4.1.bn2.running_var"}
    assert all(entries[k].status == d.CHANGED for k in changed)
    a, b = sd["fc.weight"].double(), tuned["fc.weight"].double()
    n = entries["fc.weight"].numbers
    assert n.changed == int((a != b).sum())
    assert n.max_abs == pytest.approx(float((a - b).abs().max()), rel=1e-12)
    assert n.mean_abs == pytest.approx(float((a - b).abs().mean()), rel=1e-9)
    top = max(float(a.norm()), float(b.norm()))
    assert n.rel_l2 == pytest.approx(float((a - b).norm()) / top, rel=1e-9)
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
    assert n.cosine == pytest.approx(float(cos), rel=1e-9)
    bias = entries["fc.bias"].numbers
    assert bias.changed == 1 and bias.max_abs == pytest.approx(abs(5.0 - float(sd["fc.bias"][3])))
    nan = entries["layer4.1.bn2.running_var"].numbers
    assert nan.nan_mismatch == 1 and nan.changed == 1
    # A − B is NaN there: no finite figure is given that could read as "no difference"
    assert math.isnan(nan.max_abs) and math.isnan(nan.rel_l2) and nan.cosine is None
    # a NaN appearing ranks first, then the biggest relative change
    assert [e.key for e in result.largest()][:2] == ["layer4.1.bn2.running_var", "fc.bias"]
    assert result.params_changed() == 512_000 + 1000 + 512
    assert result.params_compared() == sum(t.numel() for t in sd.values())


def test_dataparallel_copy_matches_after_the_prefix_rule(family):
    paths, sd, _ = family
    result = compare(paths["base"], paths["dp"])
    assert result.identical and result.auto_rule
    assert result.rules == [d.PrefixRule("module.", "b")]
    assert by_key(result)["conv1.weight"].b.key == "module.conv1.weight"
    exact = compare(paths["base"], paths["dp"], auto=False)
    counts = exact.counts()
    assert counts[d.ONLY_A] == counts[d.ONLY_B] == len(sd) and not exact.identical
    given = compare(paths["dp"], paths["base"], rules=[d.PrefixRule("module.")])
    assert given.identical and not given.auto_rule


def test_different_architectures(family):
    paths, _, _ = family
    result = compare(paths["base"], paths["r34"])
    counts = result.counts()
    assert counts[d.ONLY_B] > 0 and counts[d.ONLY_A] == 0
    entries = by_key(result)
    assert entries["layer1.2.conv1.weight"].status == d.ONLY_B
    assert entries["layer1.0.conv1.weight"].status == d.CHANGED  # other random weights
    assert entries["conv1.weight"].numbers.cosine == pytest.approx(0, abs=0.1)
    assert counts[d.IDENTICAL] > 0  # batch-norm ones and zeros are the same in both


def test_dtype_cast_copy(torch, family):
    paths, sd, _ = family
    result = compare(paths["base"], paths["half"])
    entries = by_key(result)
    e = entries["fc.weight"]
    assert e.status == d.DTYPE and e.a.tensor.dtype == "float32" and e.b.tensor.dtype == "float16"
    ref = (sd["fc.weight"].double() - sd["fc.weight"].half().double()).abs()
    assert e.numbers.max_abs == pytest.approx(float(ref.max()), rel=1e-12)
    assert entries["bn1.num_batches_tracked"].status == d.IDENTICAL  # int64 kept
    assert "the same values" in d.describe_numbers(entries["bn1.weight"].numbers)  # ones


def test_training_checkpoint_against_its_state_dict(family):
    paths, sd, _ = family
    found = compare(paths["train"], paths["base"])
    assert found.rules == [d.PrefixRule("model_state_dict.", "a")]
    counts = found.counts()
    assert counts[d.IDENTICAL] == len(sd) and counts[d.ONLY_A] == 2  # epoch and loss
    sub = compare(paths["train"], paths["base"], key_a="model_state_dict")
    assert sub.identical and sub.rules == []
    with pytest.raises(KeyError):
        compare(paths["train"], paths["base"], key_a="nope")


def test_non_tensor_values_are_compared(family):
    paths, _, _ = family
    result = compare(paths["train"], paths["train9"])
    entries = by_key(result)
    assert entries["epoch"].status == d.CHANGED
    assert (entries["epoch"].a.node.value, entries["epoch"].b.node.value) == (7, 9)
    assert entries["loss"].status == d.CHANGED
    assert entries["model_state_dict.fc.weight"].status == d.CHANGED
    assert entries["model_state_dict.conv1.weight"].status == d.IDENTICAL
    js = result.to_json()
    [epoch] = [x for x in js["entries"] if x["key"] == "epoch"]
    assert (epoch["value_a"], epoch["value_b"], epoch["status"]) == (7, 9, "changed")


def test_shapes_views_and_kinds(torch, tmp_path):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    u8 = torch.arange(100, dtype=torch.uint8)
    u8_changed = u8.clone()
    u8_changed[50] = 0
    a = {"w": base.clone(), "t": base.t().contiguous(), "s": torch.ones(3), "x": 1,
         "neg": torch.zeros(4), "odd": u8[3:], "odd2": u8[3:]}
    b = {"w": base.clone()[:, :9], "t": base.t(), "s": 2, "x": torch.ones(1),
         "neg": -torch.zeros(4), "odd": u8[3:].clone(), "odd2": u8_changed[3:]}
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    entries = by_key(compare(tmp_path / "a.pt", tmp_path / "b.pt"))
    assert entries["w"].status == d.SHAPE
    assert entries["t"].status == d.IDENTICAL  # a transposed view read in C order
    assert entries["s"].status == entries["x"].status == d.KIND
    # byte ranges that start at odd offsets in the files are compared byte by byte
    assert entries["odd"].status == d.IDENTICAL
    assert entries["odd2"].status == d.CHANGED and entries["odd2"].numbers.changed == 1
    neg = entries["neg"]  # -0.0 and 0.0: different bits, the same numbers
    assert neg.status == d.CHANGED and neg.numbers.changed == 0 and "bits" in neg.numbers.note


def test_chunks_cut_differently_still_pair_up(torch, tmp_path, monkeypatch):
    """A contiguous tensor against a strided one: the two streams are cut in different
    places, and the pairing must line the elements up."""
    big = torch.randn(300, 70)
    torch.save({"m": big.t().contiguous()}, tmp_path / "a.pt")
    changed = big.clone()
    changed[5, 7] += 1
    torch.save({"m": changed.t()}, tmp_path / "b.pt")
    monkeypatch.setattr(d, "RAW_BLOCK", 1000)
    monkeypatch.setattr(tensor_diff, "RAW_BLOCK", 1000)
    monkeypatch.setattr(tensor_diff, "CHUNK_ELEMENTS", 777)
    e = by_key(compare(tmp_path / "a.pt", tmp_path / "b.pt"))["m"]
    assert e.status == d.CHANGED and e.numbers.changed == 1
    assert e.numbers.max_abs == pytest.approx(1.0, rel=1e-6)


def test_difference_histogram_matches_numpy(torch, family):
    import numpy as np

    paths, sd, tuned = family
    entry = by_key(compare(paths["base"], paths["tuned"]))["fc.weight"]
    hist = drive(tensor_diff.difference_histogram(entry.a.tensor, entry.b.tensor,
                                                  entry.numbers, 40))
    diff = (sd["fc.weight"].double() - tuned["fc.weight"].double()).numpy().ravel()
    span = entry.numbers.max_abs
    assert np.array_equal(hist.counts, np.histogram(diff, bins=40, range=(-span, span))[0])
    assert hist.counts.sum() == diff.size


def test_a_cancel_token_cancels(family):
    from ckpt_inspector.core.progress import CancelToken

    paths, _, _ = family
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        compare(paths["base"], paths["tuned"], cancel=token)


# -- the command line -----------------------------------------------------------------------
def test_cli_exit_codes_and_report(family, tmp_path):
    paths, _, _ = family
    same = run_cli("diff", str(paths["base"]), str(paths["copy"]))
    assert same.returncode == 0 and "IDENTICAL" in same.stdout
    tuned = run_cli("diff", str(paths["base"]), str(paths["tuned"]))
    assert tuned.returncode == 1
    assert "DIFFERENT: 3 values changed, 119 identical" in tuned.stdout
    assert "fc.weight" in tuned.stdout and "layer4.1.bn2.running_var" in tuned.stdout
    dp = run_cli("diff", str(paths["base"]), str(paths["dp"]))
    assert dp.returncode == 0 and "'module.' stripped from B's keys" in dp.stdout
    assert run_cli("diff", "--exact", str(paths["base"]), str(paths["dp"])).returncode == 1
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    broken = run_cli("diff", str(paths["base"]), str(bad))
    assert broken.returncode == 3 and broken.stderr.count("\n") == 1 and str(bad) in broken.stderr
    usage = run_cli("diff", str(paths["base"]), str(paths["copy"]), "--key-a", "nope")
    assert usage.returncode == 2 and "nope" in usage.stderr


def test_cli_json(family):
    paths, sd, _ = family
    out = run_cli("diff", "--json", str(paths["train"]), str(paths["tuned"]),
                  "--strip-prefix-a", "model_state_dict.")
    assert out.returncode == 1
    js = json.loads(out.stdout)
    assert js["identical"] is False and js["rules_found"] is False
    assert js["rules"] == [{"prefix": "model_state_dict.", "side": "a"}]
    assert js["counts"]["identical"] == len(sd) - 3 and js["counts"]["only_a"] == 2
    assert len(js["entries"]) == len(sd) + 2  # one entry per key
    [fc] = [e for e in js["entries"] if e["key"] == "fc.weight"]
    assert fc["status"] == "changed" and fc["key_a"] == "model_state_dict.fc.weight"
    assert fc["shape_a"] == [1000, 512] and fc["changed"] == 512_000
    assert 0 < fc["rel_l2"] < 1 and math.isfinite(fc["max_abs"])
    assert js["largest"][0] == "layer4.1.bn2.running_var"
    [nan] = [e for e in js["entries"] if e["key"] == "layer4.1.bn2.running_var"]
    assert nan["max_abs"] == nan["rel_l2"] == "nan" and nan["nan_mismatch"] == 1


def test_hostile_files_are_compared_without_running_them(payload_files, marker, tmp_path):
    """Comparing two files someone sent you runs neither (the marker fixture fails the test
    if a payload created its file)."""
    zipped, legacy = payload_files["torch-zip"], payload_files["torch-legacy"]
    result = compare(zipped, legacy)
    entries = by_key(result)
    assert entries["weights"].status == d.IDENTICAL
    out = run_cli("diff", "--json", str(zipped), str(payload_files["computed-import"]))
    assert out.returncode in (1, 3)
    assert not marker.exists()


def test_diff_imports_neither_torch_nor_qt(family):
    import subprocess
    import sys

    from support import ROOT

    paths, _, _ = family
    code = ("import sys, io, contextlib; from ckpt_inspector.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    main(['diff', {str(paths['base'])!r}, {str(paths['tuned'])!r}])\n"
            "bad = [m for m in ('torch', 'PySide6') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_quantized_and_sparse_tensors(torch, quantized_file, tmp_path):
    import warnings

    path, data = quantized_file
    assert compare(path, path).identical
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = dict(data)
        x = data["per_tensor"].dequantize()
        other["per_tensor"] = torch.quantize_per_tensor(x, 0.2, 3, torch.quint8)  # new scale
        pc = data["per_channel"]
        other["per_channel"] = torch.quantize_per_channel(
            pc.dequantize(), torch.tensor([0.1, 0.2, 0.3, 0.5]), torch.tensor([0, 1, 2, 3]), 0,
            torch.qint8)
    copy = tmp_path / "q2.pt"
    torch.save(other, copy)
    entries = by_key(compare(path, copy))
    assert entries["per_tensor_qint8"].status == d.IDENTICAL
    assert entries["per_tensor"].status == d.CHANGED
    ref = (data["per_tensor"].dequantize().double() - other["per_tensor"].dequantize().double())
    assert entries["per_tensor"].numbers.max_abs == pytest.approx(float(ref.abs().max()))
    assert entries["per_channel"].status == d.CHANGED  # one channel's scale changed
    i = torch.tensor([[0, 1], [2, 0]])
    sparse_a = {"s": torch.sparse_coo_tensor(i, torch.tensor([1.0, 2.0]), (3, 3),
                                             check_invariants=True)}
    sparse_b = {"s": torch.sparse_coo_tensor(i, torch.tensor([1.0, 3.0]), (3, 3),
                                             check_invariants=True)}
    torch.save(sparse_a, tmp_path / "sa.pt")
    torch.save(sparse_a, tmp_path / "sa2.pt")
    torch.save(sparse_b, tmp_path / "sb.pt")
    assert compare(tmp_path / "sa.pt", tmp_path / "sa2.pt").identical
    changed = by_key(compare(tmp_path / "sa.pt", tmp_path / "sb.pt"))["s"]
    assert changed.status == d.CHANGED and "parts" in changed.error


def test_review_cases(torch, family, tmp_path):
    """Found by a new-user review: values chosen with --key-a/--key-b, overflow in float64,
    zeros against non-zeros, prefixes without their dot, value changes listed first,
    broken pipes and unreadable tensors."""
    paths, _, _ = family
    epochs = compare(paths["train"], paths["train9"], key_a="epoch", key_b="epoch")
    [entry] = epochs.entries
    assert entry.status == d.CHANGED and not epochs.identical
    out = run_cli("diff", str(paths["train"]), str(paths["train9"]), "--key-a", "epoch",
                  "--key-b", "epoch")
    assert out.returncode == 1 and "7 → 9" in out.stdout
    big = {"f64": torch.tensor([1e300, -1e300], dtype=torch.float64),
           "zero": torch.zeros(4), "ok": torch.ones(2)}
    flipped = {"f64": torch.tensor([-1e300, 1e300], dtype=torch.float64),
               "zero": torch.ones(4), "ok": torch.ones(2)}
    torch.save(big, tmp_path / "big.pt")
    torch.save(flipped, tmp_path / "flipped.pt")
    entries = by_key(compare(tmp_path / "big.pt", tmp_path / "flipped.pt"))
    n = entries["f64"].numbers
    assert n.rel_l2 == pytest.approx(2.0) and n.cosine == pytest.approx(-1.0)
    assert n.max_abs == pytest.approx(2e300) and n.mean_abs == pytest.approx(2e300)
    zero = entries["zero"].numbers  # zeros against ones: fully changed, not infinite
    assert zero.rel_l2 == pytest.approx(1.0) and zero.cosine is None
    assert compare(paths["base"], paths["dp"], rules=[d.PrefixRule("module", "b")]).identical
    report = run_cli("diff", str(paths["train"]), str(paths["train9"]))
    changed = report.stdout[report.stdout.index("values changed ("):]
    assert changed.splitlines()[1].split()[0] in ("epoch", "loss")  # values before tensors
    piped = subprocess.run(f"{sys.executable} -m ckpt_inspector diff {paths['base']} "
                           f"{paths['tuned']} | head -1; exit ${{PIPESTATUS[0]}}",
                           shell=True, executable="/bin/bash", cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert piped.returncode == 1
    import zipfile

    damaged = tmp_path / "damaged.pt"
    with zipfile.ZipFile(paths["base"]) as src, zipfile.ZipFile(damaged, "w") as dst:
        for item in src.infolist():
            if not item.filename.endswith("/data/0"):
                dst.writestr(item, src.read(item.filename))
    unreadable = run_cli("diff", str(damaged), str(damaged))
    assert unreadable.returncode == 3 and "could not be read" in unreadable.stderr


def test_a_cosine_near_one_says_how_far_from_one_in_the_digits_asked():
    from ckpt_inspector.core.ops.tensor_diff import format_cosine

    assert format_cosine(0.68165517) == "0.6817"
    assert format_cosine(0.68165517, 6) == "0.681655"
    assert format_cosine(0.999999995) == "1 − 5e-09"
    assert format_cosine(0.9999876543) == "1 − 1.235e-05"
    assert format_cosine(0.99994) == "0.9999"
    assert format_cosine(0.99994, 6) == "0.99994"
    assert format_cosine(-0.99999) == "-1 + 1e-05"
    assert format_cosine(1.0) == "1" and format_cosine(-1.0) == "-1"
    assert format_cosine(None) == "-"
