"""The commands on a Hugging Face sharded folder: ``info``, ``scan``, ``stats``, ``diff`` and
``export`` work on the whole model; single files keep their output."""

from __future__ import annotations

import json
import shutil

import pytest

from shards import marker_payload, save_sharded, state_dict
from support import run_cli


@pytest.fixture(scope="module")
def model(torch, tmp_path_factory):
    """The same state_dict as safetensors shards, .bin shards, one safetensors file, and a
    fine-tuned copy in shards."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("hf-cli")
    sd = state_dict(torch)
    maps = {ext: save_sharded(torch, root / ext, sd, ext) for ext in ("safetensors", "bin")}
    save_file({k: v.contiguous() for k, v in sd.items()}, root / "single.safetensors")
    tuned = dict(sd)
    tuned["lm_head.weight"] = sd["lm_head.weight"] + 1
    tuned["model.layers.2.mlp.weight"] = sd["model.layers.2.mlp.weight"] * 2
    save_sharded(torch, root / "tuned", tuned, "safetensors")
    return root, sd, maps


@pytest.mark.parametrize("ext", ["safetensors", "bin"])
def test_info_json_names_the_layout_and_every_file(model, ext):
    root, sd, maps = model
    proc = run_cli("info", str(root / ext), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["format"] == "hf-sharded" and out["verdict"] == "safe"
    assert {t["key"]: t["file"] for t in out["tensors"]} == maps[ext]
    for t in out["tensors"]:
        assert list(sd[t["key"]].shape) == t["shape"]
        assert str(sd[t["key"]].dtype) == f"torch.{t['dtype']}"
    files = {f["path"]: f for f in out["files"]}
    for shard in set(maps[ext].values()):
        assert files[shard]["size"] == (root / ext / shard).stat().st_size
        assert files[shard]["format"] in ("safetensors", "torch-zip")
    assert out["file_size"] == sum(f["size"] for f in out["files"])
    assert out["metadata"]["config"]["model_type"] == "toy"
    assert out["metadata"]["index metadata"]["total_size"] > 0
    text = run_cli("info", str(root / ext))
    assert text.returncode == 0 and "hf-sharded" in text.stdout
    assert all(shard in text.stdout for shard in set(maps[ext].values()))


def test_single_files_have_no_layout_keys(model):
    out = json.loads(run_cli("info", str(model[0] / "single.safetensors"), "--json").stdout)
    assert "files" not in out and all("file" not in t for t in out["tensors"])


def test_scan_of_a_folder_with_a_malicious_shard(model, torch, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(model[0] / "bin", folder)
    marker = tmp_path / "PWNED-marker"
    marker_payload(torch, folder / "pytorch_model-00003-of-00003.bin", marker)
    proc = run_cli("scan", str(folder), "--json")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["verdict"] == "dangerous" and out["format"] == "hf-sharded"
    assert any(f["severity"] == "dangerous" and f["file"] == "pytorch_model-00003-of-00003.bin"
               for f in out["findings"])
    for command in (("info", str(folder)), ("stats", str(folder)),
                    ("diff", str(folder), str(model[0] / "bin"))):
        run_cli(*command)
    assert not marker.exists()
    assert run_cli("scan", str(model[0] / "bin")).returncode == 0


def test_stats_on_a_folder(model):
    root, sd, _maps = model
    proc = run_cli("stats", str(root / "safetensors"), "lm_head.weight", "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)["tensors"]["lm_head.weight"]
    ref = sd["lm_head.weight"]
    assert got["shape"] == list(ref.shape)
    assert got["max"] == pytest.approx(ref.max().item())
    assert got["mean"] == pytest.approx(ref.mean().item(), abs=1e-6)


def test_diff_across_layouts(model):
    root = model[0]
    for a, b in ((root / "safetensors", root / "single.safetensors"),
                 (root / "bin", root / "safetensors"),
                 (root / "bin" / "pytorch_model.bin.index.json", root / "single.safetensors")):
        proc = run_cli("diff", str(a), str(b), "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads(proc.stdout)["identical"]
    proc = run_cli("diff", str(root / "safetensors"), str(root / "tuned"), "--json")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    changed = {e["key"] for e in out["entries"] if e["status"] not in ("identical",)}
    assert changed == {"lm_head.weight", "model.layers.2.mlp.weight"}


@pytest.mark.parametrize("to", ["safetensors", "state_dict"])
def test_export_a_folder_to_one_file(model, torch, tmp_path, to):
    root, sd, _maps = model
    out = tmp_path / ("all.safetensors" if to == "safetensors" else "all.pt")
    proc = run_cli("export", str(root / "bin"), "--to", to, "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if to == "safetensors":
        from safetensors.torch import load_file

        got = load_file(out)
    else:
        got = torch.load(out, weights_only=True)
    assert set(got) == set(sd)
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    shard = root / "bin" / "pytorch_model-00001-of-00003.bin"
    refused = run_cli("export", str(root / "bin"), "--to", to, "-o", str(shard), "--overwrite")
    assert refused.returncode == 2 and "replace a file the source" in refused.stderr


def test_missing_shard_and_unknown_folder(model, tensors_file, tmp_path):
    folder = tmp_path / "partial"
    shutil.copytree(model[0] / "safetensors", folder)
    (folder / "model-00002-of-00003.safetensors").unlink()
    proc = run_cli("info", str(folder), "--json")
    assert proc.returncode == 0 and "damaged" in proc.stderr
    out = json.loads(proc.stdout)
    assert any("model-00002-of-00003.safetensors" in w for w in out["warnings"])
    damaged = [t for t in out["tensors"] if "problem" in t]
    assert damaged and all(t["file"] == "model-00002-of-00003.safetensors" for t in damaged)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(tensors_file[0], mixed / "one.pt")
    shutil.copy(model[0] / "single.safetensors", mixed / "two.safetensors")
    for command in ("info", "scan", "stats"):
        proc = run_cli(command, str(mixed))
        assert proc.returncode == 3, (command, proc.stderr)
        assert "one.pt (torch-zip)" in proc.stderr and "two.safetensors" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def _without(model, tmp_path, ext: str, shard: int) -> tuple:
    """A copy of the sharded model in ``ext`` with its ``shard``-th file removed."""
    folder = tmp_path / f"without-{ext}"
    shutil.copytree(model[0] / ext, folder)
    gone = sorted(folder.glob(f"*-0000{shard}-of-*.{ext}"))[0]
    gone.unlink()
    lost = sorted(k for k, v in model[2][ext].items() if v == gone.name)
    assert lost
    return folder, gone.name, lost


def test_commands_on_the_tensors_of_a_missing_shard(model, tmp_path):
    """stats names the missing file (exit 3 for a named tensor, never a traceback); diff
    lists them unreadable, not "shape changed"; info counts no elements for them."""
    folder, gone, lost = _without(model, tmp_path, "safetensors", 2)
    one = run_cli("stats", str(folder), lost[0])
    assert one.returncode == 3 and "Traceback" not in one.stderr
    assert f"its file {gone} is missing" in one.stdout and "1 tensor could not" in one.stderr
    every = run_cli("stats", str(folder), "--json")
    assert every.returncode == 0 and "Traceback" not in every.stderr
    out = json.loads(every.stdout)["tensors"]
    assert {k for k, e in out.items() if "error" in e} == set(lost)
    assert all(gone in out[k]["error"] for k in lost)
    compared = run_cli("diff", str(folder), str(model[0] / "safetensors"), "--json")
    entries = json.loads(compared.stdout)["entries"]
    status = {e["key"]: e["status"] for e in entries}
    assert {k for k, s in status.items() if s == "unreadable"} == set(lost)
    assert "shape changed" not in status.values()
    info = json.loads(run_cli("info", str(folder), "--json").stdout)
    records = {t["key"]: t for t in info["tensors"]}
    assert all(records[k]["numel"] is None and records[k]["nbytes"] is None for k in lost)
    sd = model[1]
    kept = sum(t.numel() for k, t in sd.items() if k not in lost)
    assert info["totals"]["numel"] == kept
    assert info["totals"]["damaged_tensors"] == info["totals"]["unknown_shape_tensors"] == len(lost)
    text = run_cli("info", str(folder))
    assert f"{kept:,} elements" in text.stdout and f"{len(lost)} cannot be read" in text.stdout


@pytest.mark.parametrize("ext", ["safetensors", "bin"])
def test_scan_of_a_folder_with_a_missing_shard_is_not_clean(model, tmp_path, ext):
    """A missing shard was not scanned: a finding names it; a missing .bin shard (where a
    payload could be) makes it needs-trust (exit 1), a missing safetensors shard is an
    info finding, but the scan exits 3 (incomplete), never a clean safe/0."""
    folder, gone, _ = _without(model, tmp_path, ext, 2)
    proc = run_cli("scan", str(folder), "--json")
    out = json.loads(proc.stdout)
    found = [f for f in out["findings"] if f["code"] == "missing-file"]
    assert len(found) == 1 and found[0]["file"] == gone and "not scanned" in found[0]["message"]
    assert out["unscanned"] == [gone]
    if ext == "bin":
        assert out["verdict"] == "needs-trust" and proc.returncode == 1
    else:
        assert out["verdict"] == "safe" and proc.returncode == 3 and gone in proc.stderr
    text = run_cli("scan", str(folder))
    assert "incomplete: 1 file not scanned" in text.stdout and text.returncode != 0


def test_load_of_a_dangerous_folder_says_so(model, torch, tmp_path):
    """load assembles a dangerous folder without running it, says on stderr that the
    verdict is dangerous and which entry it left out, and exits 1 (not safe)."""
    folder = tmp_path / "bad"
    shutil.copytree(model[0] / "bin", folder)
    marker = tmp_path / "PWNED-marker"
    marker_payload(torch, folder / "pytorch_model-00003-of-00003.bin", marker)
    proc = run_cli("load", str(folder))
    assert proc.returncode == 1, proc.stderr
    assert "verdict is dangerous" in proc.stderr
    assert "left out: 'model.extra'" in proc.stderr
    assert f"{len(model[1])} tensors," in proc.stdout
    out = json.loads(run_cli("load", str(folder), "--json").stdout)
    assert out["verdict"] == "dangerous" and out["left_out"] == ["model.extra"]
    assert not marker.exists()
