"""``hf://owner/repo[@revision]/path`` against a fake Hub on 127.0.0.1 (tests/fakehub.py):
the same tensors as the local file in one HEAD and a few ranged GETs pinned to the commit,
private repositories with and without a token, missing files in one line, and the verdict
from the bytes read."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ckpt_inspector.core import open_checkpoint
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.io import paths
from ckpt_inspector.core.io import remote as remote_mod
from ckpt_inspector.core.scan import scan
from ckpt_inspector.core.tensors import to_numpy
from ckpt_inspector.core.tree import key_of

from fakehub import FakeHub, Repo
from support import payload, run_cli

pytestmark = pytest.mark.usefixtures("loopback_only")  # tests/conftest.py


@pytest.fixture(scope="module")
def made(tmp_path_factory, torch):
    """The files the repositories serve, as bytes, and what was saved in them."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("hub")
    gen = torch.Generator().manual_seed(1)
    small = {f"layers.{i}.weight": torch.randn(16, 16, generator=gen) for i in range(40)}
    small["head.weight"] = torch.randn(256, 256, generator=gen)
    save_file(small, str(folder / "model.safetensors"))
    zipped = {f"blocks.{i}.weight": torch.randn(64, generator=gen) for i in range(100)}
    torch.save(zipped, folder / "m.pt")
    marker = folder.parent / "hub-marker"
    (folder / "evil.pkl").write_bytes(payload(marker))
    data = {n: (folder / n).read_bytes() for n in ("model.safetensors", "m.pt", "evil.pkl")}
    from shards import save_sharded, state_dict

    save_sharded(torch, folder / "sharded", state_dict(torch), shards=3)
    data["sharded"] = {p.name: p.read_bytes() for p in (folder / "sharded").iterdir()}
    from gguf_files import write_gguf_split

    write_gguf_split(folder / "splits")
    data["splits"] = {p.name: p.read_bytes() for p in (folder / "splits").iterdir()}
    from adapter_files import kohya_file, peft_by_hand

    peft_by_hand(torch, folder / "adapter")
    data["adapter"] = {p.name: p.read_bytes() for p in (folder / "adapter").iterdir()}
    kohya_file(torch, folder / "kohya.safetensors")
    data["kohya.safetensors"] = (folder / "kohya.safetensors").read_bytes()
    return folder, data, small, zipped, marker


@pytest.fixture
def hub(made, monkeypatch, tmp_path):
    """The fake Hub, and huggingface_hub pointed at it (this process and the CLI's), with
    its own HF_HOME and no token."""
    _folder, data, *_ = made
    repos = {
        "owner/repo": Repo({"model.safetensors": data["model.safetensors"],
                            "sub/m.pt": data["m.pt"], "evil.pkl": data["evil.pkl"],
                            "config.json": b"{}"}, lfs={"model.safetensors", "sub/m.pt"}),
        "owner/private": Repo({"model.safetensors": data["model.safetensors"]}, private=True,
                              lfs={"model.safetensors"}),
        "owner/sharded": Repo(data["sharded"], lfs={n for n in data["sharded"]
                                                    if n.endswith(".safetensors")}),
        "owner/notes": Repo({"README.md": b"# nothing to load\n"}),
        "owner/custom": Repo({
            "model.safetensors": data["model.safetensors"],
            "config.json": json.dumps({"auto_map": {
                "AutoModel": "modeling_evil.EvilModel"}}).encode(),
            "tokenizer_config.json": json.dumps({"auto_map": {
                "AutoTokenizer": ["someone/evil--tokenization_evil.EvilTokenizer",
                                  None]}}).encode(),
            "modeling_evil.py": b"import os\nos.system('touch " + str(made[4]).encode()
                                + b"')\n",
            "helpers.py": b"print('hi')\n",
            "custom_generate/generate.py": b"import os\n"}, lfs={"model.safetensors"}),
        "owner/gguf": Repo(data["splits"], lfs=set(data["splits"])),
        "owner/adapter": Repo({**data["adapter"], "kohya.safetensors": data["kohya.safetensors"]},
                              lfs={"adapter_model.safetensors", "kohya.safetensors"}),
    }
    with FakeHub(repos) as fake:
        env = {"HF_ENDPOINT": fake.endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "",
               "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0"}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "ENDPOINT", fake.endpoint)  # what HF_ENDPOINT sets
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            fake.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
        monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "hf" / "agents"))
        fake.env = env
        yield fake


def listing(ckpt):
    return [(key_of(p), n.tensor.dtype, n.tensor.shape) for p, n in ckpt.tensors()]


def test_a_safetensors_file_takes_two_requests_pinned_to_the_commit(hub, made):
    folder = made[0]
    remote = open_checkpoint("hf://owner/repo/model.safetensors")
    assert listing(remote) == listing(open_checkpoint(str(folder / "model.safetensors")))
    log = hub.requests()
    assert len(log) == 2 and all(r.method == "GET" and r.range for r in log), log
    sha = hub.repos["owner/repo"].sha
    assert "/resolve/main/" in log[0].path and f"/resolve/{sha}/" in log[1].path, log
    assert remote.metadata["remote"]["requests"] == len(log)
    # of a 306 KB file: the tail and the start (the header, read ahead)
    assert hub.bytes_sent() <= remote_mod.TAIL + remote_mod.HEAD_BLOCKS * remote_mod.BLOCK


def test_through_the_hubs_redirect_to_a_cdn(hub, made):
    hub.cdn = True
    remote = open_checkpoint("hf://owner/repo/model.safetensors")
    assert listing(remote) == listing(open_checkpoint(str(made[0] / "model.safetensors")))
    paths = [r.path.split("/")[1] for r in hub.requests()]
    assert paths == ["owner", "cdn", "owner", "cdn"], hub.requests()  # two ranged reads
    assert remote.metadata["remote"]["requests"] == 2


def test_a_torch_zip_in_a_folder_at_a_revision(hub, made):
    folder, _data, _small, zipped, _marker = made
    remote = open_checkpoint("hf://owner/repo@main/sub/m.pt")
    assert listing(remote) == listing(open_checkpoint(str(folder / "m.pt")))
    node = {key_of(p): n for p, n in remote.tensors()}["blocks.7.weight"]
    assert np.array_equal(to_numpy(node.tensor), zipped["blocks.7.weight"].numpy())
    assert len(hub.requests()) <= 1 + 8 + 1, hub.requests()
    assert scan(remote).verdict == "safe"


def test_one_tensors_values_are_the_saved_ones(hub, made):
    small = made[2]
    remote = open_checkpoint("hf://owner/repo/model.safetensors")
    node = {key_of(p): n for p, n in remote.tensors()}["head.weight"]
    hub.clear()
    assert np.array_equal(to_numpy(node.tensor), small["head.weight"].numpy())
    assert hub.bytes_sent() <= node.tensor.nbytes + (2 << 20)


def test_the_revision_is_pinned_to_the_commit_sha(hub, made):
    sha = hub.repos["owner/repo"].sha
    remote = open_checkpoint(f"hf://owner/repo@{sha}/model.safetensors")
    assert len(list(remote.tensors())) == len(made[2])
    with pytest.raises(CheckpointError, match="no such file"):
        open_checkpoint("hf://owner/repo@v9/model.safetensors")


def test_the_cli_reads_an_hf_url(hub, made):
    proc = run_cli("info", "--json", "hf://owner/repo/model.safetensors", env=hub.env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert len(doc["tensors"]) == len(made[2])
    assert doc["metadata"]["remote"]["requests"] == len(hub.requests()) == 2  # the fake Hub


@pytest.mark.parametrize("url", ["hf://owner/nope/model.safetensors",
                                 "hf://owner/repo/nope.safetensors"])
def test_a_missing_repo_or_file_is_one_line_and_exit_3(hub, url):
    proc = run_cli("info", url, env=hub.env)
    assert proc.returncode == 3 and "no such file" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_private_repo_needs_a_token_and_never_prints_it(hub, made, monkeypatch):
    proc = run_cli("info", "hf://owner/private/model.safetensors", env=hub.env)
    assert proc.returncode == 3 and "HF_TOKEN" in proc.stderr and "hf auth login" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not [r for r in hub.requests() if r.authorized]
    with pytest.raises(CheckpointError, match="HF_TOKEN"):
        open_checkpoint("hf://owner/private/model.safetensors")

    monkeypatch.setenv("HF_TOKEN", hub.token)
    remote = open_checkpoint("hf://owner/private/model.safetensors")
    assert len(list(remote.tensors())) == len(made[2])
    proc = run_cli("info", "--json", "hf://owner/private/model.safetensors",
                   env={**hub.env, "HF_TOKEN": hub.token})
    assert proc.returncode == 0, proc.stderr
    assert hub.token not in proc.stdout + proc.stderr

    wrong = run_cli("info", "hf://owner/private/model.safetensors",
                    env={**hub.env, "HF_TOKEN": "hf_wrong_secret_xyz"})
    assert wrong.returncode == 3 and "hf_wrong_secret_xyz" not in wrong.stdout + wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr


def test_a_pickle_that_would_run_code_is_dangerous_and_never_runs(hub, made):
    marker = made[4]
    proc = run_cli("scan", "hf://owner/repo/evil.pkl", env=hub.env)
    assert proc.returncode != 0 and "dangerous" in proc.stdout.lower(), proc.stderr
    assert not marker.exists()


def test_a_whole_repository_opens_as_the_model_it_holds(hub, made):
    """``hf://owner/repo``: the layout found from the repository's listing, the shards read
    at the commit, concurrently; a model saved in one file beside its config too."""
    folder, data, *_ = made
    hub.clear()
    ckpt = open_checkpoint("hf://owner/sharded")
    local = open_checkpoint(str(folder / "sharded"))
    assert ckpt.format == "hf-sharded" and listing(ckpt) == listing(local)
    shards = [n for n in data["sharded"] if n.endswith(".safetensors")]
    files = [r for r in hub.requests() if "/resolve/" in r.path or "/cdn/" in r.path]
    assert len(files) <= 2 + 2 * len(shards), hub.requests()  # index, config, 1-2 a shard
    single = open_checkpoint("hf://owner/repo")
    assert listing(single) == listing(open_checkpoint(str(folder / "model.safetensors")))


def test_a_whole_repository_is_listed_by_the_tree_api_alone_in_pages(hub, made):
    """The listing is the tree route's pages and nothing else (no repository info first,
    as HfFileSystem would ask); a private repository's listing without a token names the
    token."""
    folder = made[0]
    paths.forget("hf://owner/sharded")
    hub.clear()
    hub.page_size = 2
    try:
        ckpt = open_checkpoint("hf://owner/sharded")
    finally:
        hub.page_size = 1000
    assert listing(ckpt) == listing(open_checkpoint(str(folder / "sharded")))
    api = [r.path for r in hub.requests() if r.path.startswith("/api/")]
    assert api and all("/tree/" in p for p in api), api
    assert len(api) == -(-len(hub.repos["owner/sharded"].files) // 2), api
    with pytest.raises(CheckpointError, match="HF_TOKEN"):
        open_checkpoint("hf://owner/private")


def test_a_lora_adapter_in_a_repository(hub, made):
    """A PEFT adapter's repository opens as the adapter (its config read beside it); a
    kohya file's alpha tensors are not fetched one request each: its metadata says alpha."""
    from ckpt_inspector.core.adapters import find_adapter

    folder = made[0]
    adapter = find_adapter(open_checkpoint("hf://owner/adapter"))
    local = find_adapter(open_checkpoint(str(folder / "adapter")))
    assert adapter.kind == "peft" and adapter.to_json()["modules"] == local.to_json()["modules"]
    hub.clear()
    kohya = find_adapter(open_checkpoint("hf://owner/adapter/kohya.safetensors"))
    assert len([r for r in hub.requests() if "/resolve/" in r.path or "/cdn/" in r.path]) <= 3
    assert any("not fetched from a remote file" in n for n in kohya.notes)
    linear = kohya.module_named(
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q")
    assert (linear.alpha, linear.alpha_from) == (2.0, "ss_network_alpha")


def test_a_repository_holding_no_model_is_refused_with_a_hint(hub):
    with pytest.raises(CheckpointError, match="name a file"):
        open_checkpoint("hf://owner/notes")




def test_the_fake_hub_lists_a_repository_as_hffilesystem_asks(hub):
    """What a whole-model layout would start from: HfFileSystem's listing (names, sizes)
    through the tree route (paginated) and paths-info, at the commit."""
    from huggingface_hub import HfApi, HfFileSystem

    hub.page_size = 2  # every listing in several pages
    sha = hub.repos["owner/repo"].sha
    fs = HfFileSystem(endpoint=hub.endpoint, skip_instance_cache=True)
    found = fs.find(f"owner/repo@{sha}", detail=True)
    files = hub.repos["owner/repo"].files
    assert {k.split("/", 2)[2]: v["size"] for k, v in found.items()} == \
        {n: len(d) for n, d in files.items()}
    assert found[f"owner/repo@{sha}/model.safetensors"]["lfs"].sha256
    assert [e["name"] for e in fs.ls("owner/repo", detail=True)] == [
        "owner/repo/config.json", "owner/repo/evil.pkl", "owner/repo/model.safetensors",
        "owner/repo/sub"]
    tree = hub.requests("/tree/")
    assert len(tree) >= 3 and all(r.status == 200 for r in tree)
    infos = HfApi(endpoint=hub.endpoint).get_paths_info("owner/repo", ["sub/m.pt", "sub"],
                                                        revision=sha)
    assert [(i.path, getattr(i, "size", None)) for i in infos] == [
        ("sub/m.pt", len(files["sub/m.pt"])), ("sub", None)]
    assert HfApi(endpoint=hub.endpoint).model_info("owner/repo").sha == sha


def test_a_split_gguf_model_in_a_repository_opens_whole(hub, made):
    folder = made[0] / "splits"
    remote = open_checkpoint("hf://owner/gguf")
    local = open_checkpoint(str(folder))
    assert remote.format == local.format and remote.files and len(remote.files) == 3
    assert listing(remote) == listing(local)
    assert {f["path"] for f in remote.files} == {f["path"] for f in local.files}


@pytest.fixture
def big_shards(hub, tmp_path):
    """A model of two shards larger than the probe's tail (their headers far from their
    ends, as real shards are), in ``owner/big``."""
    from safetensors.numpy import save_file

    files: dict[str, bytes] = {}
    weight_map = {}
    for k in (1, 2):
        name = f"model-0000{k}-of-00002.safetensors"
        part = {f"layers.{k}.{i}.weight": np.full((8, 8), i, np.float32) for i in range(50)}
        part[f"layers.{k}.big"] = np.zeros(100_000, np.float32)  # 400 KB after the header
        save_file(part, str(tmp_path / name))
        files[name] = (tmp_path / name).read_bytes()
        weight_map |= dict.fromkeys(part, name)
    files["model.safetensors.index.json"] = json.dumps({"weight_map": weight_map}).encode()
    hub.repos["owner/big"] = Repo(files, lfs={n for n in files if n.endswith(".safetensors")})
    return files


def test_a_listed_shards_start_is_asked_beside_its_tail(hub, big_shards, monkeypatch):
    """A shard the listing says is larger than the tail: its start (the header) is asked
    at the revision beside the probe of its end, not after it (one round trip, two
    requests); the two answers must name one commit."""
    hub.clear()
    ckpt = open_checkpoint("hf://owner/big")
    assert len(list(ckpt.tensors())) == 102 and scan(ckpt).verdict == "safe"
    for name in (n for n in big_shards if n.endswith(".safetensors")):
        asked = hub.requests(name)
        assert sorted(r.range for r in asked) == [
            f"bytes=-{remote_mod.TAIL}", f"bytes=0-{remote_mod.BESIDE - 1}"], asked
        assert all("/resolve/main/" in r.path for r in asked), asked  # neither waited
    assert ckpt.metadata["remote"]["requests"] == len(
        [r for r in hub.requests() if "/resolve/" in r.path])
    # a new commit between the two answers: the shard is not read as a mix of two versions
    from ckpt_inspector.core.io import hub as hub_mod

    real = hub_mod.first_bytes
    monkeypatch.setattr(hub_mod, "first_bytes",
                        lambda url, n: ("0" * 40, real(url, n)[1]))
    monkeypatch.setenv("CKPT_INSPECTOR_NO_CACHE", "1")  # the first open's copy would answer
    mixed = open_checkpoint("hf://owner/big")
    assert all(f.get("problem", "").startswith("the file changed on the server")
               for f in mixed.files if f["path"].endswith(".safetensors")), mixed.files


def test_code_a_repository_imports_is_found_from_its_listing(hub, made):
    """The configs beside config.json are read where the listing shows them (one small
    request each): a tokenizer's auto_map, here naming another repository, and
    custom_generate/generate.py make the repository needs-trust, as the same folder on
    disk; a loose Python file is named; no Python file is fetched."""
    hub.clear()
    report = scan(open_checkpoint("hf://owner/custom"))
    assert report.verdict == "needs-trust", report.findings
    code = sorted(f.file for f in report.findings if f.code == "remote-code")
    assert code == ["config.json", "custom_generate/generate.py", "tokenizer_config.json"]
    assert any("Hub repository someone/evil" in f.message for f in report.findings)
    assert [f.file for f in report.findings if f.code == "code-file"] == ["helpers.py"]
    fetched = [r.path for r in hub.requests() if "/resolve/" in r.path]
    assert not any(p.endswith(".py") for p in fetched), fetched
    assert sum(p.endswith("tokenizer_config.json") for p in fetched) <= 2, fetched
    assert not made[4].exists()
