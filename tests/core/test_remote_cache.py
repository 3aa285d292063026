"""The disk cache of remote structure: a second open of a URL is one conditional request
(the freshness check) with the tail and every structure block read from disk; a changed
file (new ETag) is read anew; ``--no-cache`` neither reads nor writes it; the size limit
prunes the least recently used; a corrupt or truncated file is refetched, never trusted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ckpt_inspector.core import open_checkpoint
from ckpt_inspector.core.io.remote_cache import DiskCache, Entry, cacheable
from ckpt_inspector.core.scan import scan
from ckpt_inspector.core.tree import key_of

from rangeserver import RangeServer
from support import ROOT, run_cli

pytestmark = pytest.mark.usefixtures("loopback_only")  # tests/conftest.py


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("CKPT_INSPECTOR_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def zips(tmp_path_factory, torch) -> dict[str, bytes]:
    """Two torch.save zips of 800 tensors (different keys), as bytes."""
    folder = tmp_path_factory.mktemp("zips")
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name, prefix in (("many.pt", "blocks"), ("other.pt", "layers")):
        torch.save({f"{prefix}.{i // 4}.part{i % 4}.weight": torch.randn(800, generator=gen)
                    for i in range(800)}, folder / name)
        out[name] = (folder / name).read_bytes()
    return out


@pytest.fixture
def server(zips):
    with RangeServer({"many.pt": zips["many.pt"]}) as rs:
        yield rs


def structure(ckpt) -> list:
    return [(key_of(p), n.tensor.dtype, n.tensor.shape) for p, n in ckpt.tensors()]


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_a_second_open_is_one_conditional_request(server, cache):
    first = open_checkpoint(server.url("many.pt"))
    n = len(server.requests())
    assert n >= 2 and first.metadata["remote"]["requests"] == n
    assert files_in(cache)
    server.clear()
    second = open_checkpoint(server.url("many.pt"))
    [probe] = server.requests()
    assert probe.status == 304 and probe.sent == 0
    assert second.metadata["remote"] == {**first.metadata["remote"], "requests": 1, "bytes": 0}
    assert structure(second) == structure(first) and len(structure(second)) == 800
    assert scan(second).verdict == scan(first).verdict == "safe"


def test_a_new_process_reads_the_structure_from_disk(server, cache):
    env = {"CKPT_INSPECTOR_CACHE_DIR": str(cache)}
    one = run_cli("info", "--json", server.url("many.pt"), env=env)
    assert one.returncode == 0, one.stderr
    n = len(server.requests())
    server.clear()
    two = run_cli("info", "--json", server.url("many.pt"), env=env)
    assert two.returncode == 0, two.stderr
    assert [r.status for r in server.requests()] == [304]
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert a["metadata"].pop("remote")["requests"] == n
    assert b["metadata"].pop("remote")["requests"] == 1
    assert a == b


def test_a_changed_file_is_read_anew(server, cache, zips):
    open_checkpoint(server.url("many.pt"))
    server.put("many.pt", zips["other.pt"])  # a new ETag
    server.clear()
    changed = open_checkpoint(server.url("many.pt"))
    assert server.requests()[0].status == 206 and len(server.requests()) >= 2
    assert all(key.startswith("layers.") for key, _d, _s in structure(changed))
    server.clear()
    again = open_checkpoint(server.url("many.pt"))
    assert [r.status for r in server.requests()] == [304]
    assert structure(again) == structure(changed)


def test_no_cache_neither_reads_nor_writes(server, cache):
    off = run_cli("--no-cache", "info", "--json", server.url("many.pt"),
                  env={"CKPT_INSPECTOR_CACHE_DIR": str(cache)})
    assert off.returncode == 0, off.stderr
    n = len(server.requests())
    assert n >= 2 and not files_in(cache)
    open_checkpoint(server.url("many.pt"))  # now cached
    server.clear()
    after = run_cli("info", "--no-cache", "--json", server.url("many.pt"),
                    env={"CKPT_INSPECTOR_CACHE_DIR": str(cache)})
    assert after.returncode == 0, after.stderr
    assert len(server.requests()) == n and "If-None-Match" not in str(server.requests())


def test_the_env_var_turns_it_off(server, cache, monkeypatch):
    monkeypatch.setenv("CKPT_INSPECTOR_NO_CACHE", "1")
    for _ in range(2):
        server.clear()
        open_checkpoint(server.url("many.pt"))
        assert len(server.requests()) >= 2
    assert not files_in(cache)


def test_the_size_limit_prunes_the_least_recently_used(zips, cache, monkeypatch):
    names = ("a.pt", "b.pt", "c.pt")
    with RangeServer(dict.fromkeys(names, zips["many.pt"])) as rs:
        open_checkpoint(rs.url("a.pt"))
        one = sum(p.stat().st_size for p in files_in(cache))
        monkeypatch.setenv("CKPT_INSPECTOR_CACHE_MAX", str(one * 5 // 2))  # two fit
        open_checkpoint(rs.url("b.pt"))
        open_checkpoint(rs.url("a.pt"))  # used again: b is now the oldest
        open_checkpoint(rs.url("c.pt"))
        assert len(list(cache.iterdir())) == 2
        assert sum(p.stat().st_size for p in files_in(cache)) <= one * 5 // 2
        rs.clear()
        for name in ("a.pt", "c.pt", "b.pt"):  # b last: writing it prunes again
            open_checkpoint(rs.url(name))
        by_name = {n: [r.status for r in rs.requests(n)] for n in names}
        assert by_name["a.pt"] == [304] and by_name["c.pt"] == [304]
        assert by_name["b.pt"][0] == 206


def test_a_corrupt_block_is_fetched_again(server, cache):
    first = open_checkpoint(server.url("many.pt"))
    [entry] = cache.iterdir()
    blocks = sorted((p for p in entry.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    block = blocks[0]  # the zip's first block (data.pkl lies there), not the tail
    raw = bytearray(block.read_bytes())
    raw[-1] ^= 0xFF
    block.write_bytes(bytes(raw))
    server.clear()
    second = open_checkpoint(server.url("many.pt"))
    assert [r.status for r in server.requests()] == [304, 206]
    assert structure(second) == structure(first)
    server.clear()
    open_checkpoint(server.url("many.pt"))
    assert [r.status for r in server.requests()] == [304]  # rewritten


def test_a_truncated_tail_makes_the_first_request_unconditional(server, cache):
    first = open_checkpoint(server.url("many.pt"))
    [entry] = cache.iterdir()
    tail = entry / str(Entry(DiskCache(cache), entry).tail)
    tail.write_bytes(tail.read_bytes()[:1000])
    server.clear()
    second = open_checkpoint(server.url("many.pt"))
    [probe] = server.requests()  # the blocks on disk are still this version's
    assert probe.status == 206 and structure(second) == structure(first)
    server.clear()
    open_checkpoint(server.url("many.pt"))
    assert [r.status for r in server.requests()] == [304]


def test_garbage_in_the_cache_is_ignored(server, cache):
    open_checkpoint(server.url("many.pt"))
    [entry] = cache.iterdir()
    for p in entry.iterdir():
        p.write_bytes(b"\0" * 50)
    server.clear()
    ckpt = open_checkpoint(server.url("many.pt"))
    assert len(structure(ckpt)) == 800 and server.requests()[0].status == 206


def test_a_url_with_credentials_is_never_cached(server, cache):
    url = server.url("many.pt").replace("http://", "http://user:secret@")
    assert len(structure(open_checkpoint(url))) == 800
    assert not files_in(cache)
    assert not cacheable("https://host/m.pt?X-Amz-Signature=abc&X-Amz-Credential=k")
    assert not cacheable("https://host/m.pt?token=abc")
    assert cacheable("https://host/m.pt?download=1") and cacheable("hf://o/r@main/m.pt")


def test_the_cache_never_holds_the_url(server, cache):
    open_checkpoint(server.url("many.pt"))
    assert all(b"many.pt" not in p.read_bytes() and "many" not in p.name
               for p in files_in(cache))


def test_two_processes_at_once(server, cache):
    env = {**os.environ, "CKPT_INSPECTOR_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-m", "ckpt_inspector", "info", "--json", server.url("many.pt")]
    procs = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    docs = [json.loads(out) for out, _err in outs]
    assert docs[0]["tensors"] == docs[1]["tensors"]
    assert not [p for p in files_in(cache) if p.name.endswith(".tmp")]
    server.clear()
    open_checkpoint(server.url("many.pt"))
    assert [r.status for r in server.requests()] == [304]


def test_a_cache_folder_that_cannot_be_written_only_costs_requests(server, tmp_path,
                                                                   monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_bytes(b"")
    monkeypatch.setenv("CKPT_INSPECTOR_CACHE_DIR", str(blocked / "cache"))
    assert len(structure(open_checkpoint(server.url("many.pt")))) == 800


def test_disk_cache_entries_by_hand(tmp_path):
    dc = DiskCache(tmp_path, limit=1 << 20)
    entry = dc.open("http://h/x.pt")
    assert entry is not None and entry.known() is None
    entry.keep('"e1"', 100, (90, b"t" * 10))
    entry.put(0, b"b" * 64)
    again = dc.open("http://h/x.pt")
    assert again is not None and again.known() == (100, '"e1"', (90, b"t" * 10))
    assert again.get(0, 64) == b"b" * 64 and again.get(0, 65) is None
    again.keep('"e2"', 100, (90, b"u" * 10))  # a new version drops the old blocks
    assert again.get(0, 64) is None and dc.open("http://h/x.pt").known()[1] == '"e2"'
    assert dc.open("http://u:p@h/x.pt") is None
