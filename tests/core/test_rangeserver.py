"""The loopback range server of the remote tests, checked with urllib/http.client and fsspec."""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from rangeserver import RangeServer, parse_range

DATA = os.urandom(300_000)
SMALL = bytes(range(256)) * 4  # 1024 bytes


pytestmark = pytest.mark.usefixtures("loopback_only")  # tests/conftest.py


# urllib without proxies from the environment: requests go straight to 127.0.0.1
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, headers=headers)
    try:
        with _OPENER.open(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "a.bin").write_bytes(DATA)
    (tmp_path / "model" / "b c.bin").write_bytes(SMALL)
    (tmp_path / "top.bin").write_bytes(SMALL)
    return tmp_path


@pytest.fixture
def server(folder: Path):
    with RangeServer(folder) as s:
        yield s


def test_parse_range() -> None:
    assert parse_range("bytes=0-9", 100) == (0, 9)
    assert parse_range("bytes=90-", 100) == (90, 99)
    assert parse_range("bytes=-10", 100) == (90, 99)
    assert parse_range("bytes=-500", 100) == (0, 99)
    assert parse_range("bytes=50-5000", 100) == (50, 99)
    assert parse_range("bytes=100-", 100) is False
    assert parse_range("bytes=-0", 100) is False
    for ignored in (None, "bytes=5-1", "bytes=0-1,5-6", "items=0-1", "bytes=-"):
        assert parse_range(ignored, 100) is None


def test_get_head_and_ranges(server: RangeServer) -> None:
    url = server.url("model/a.bin")
    status, h, body = fetch(url)
    assert (status, body, h["Accept-Ranges"]) == (200, DATA, "bytes")
    assert h["Content-Length"] == str(len(DATA)) and h["ETag"] and h["Last-Modified"]
    status, h2, body = fetch(url, "HEAD")
    assert (status, body, h2["Content-Length"], h2["ETag"]) == (200, b"", h["Content-Length"],
                                                                h["ETag"])
    for rng, start, end in (("bytes=10-19", 10, 19), ("bytes=299990-", 299990, 299999),
                            ("bytes=-7", 299993, 299999), ("bytes=5-999999", 5, 299999)):
        status, h, body = fetch(url, Range=rng)
        assert (status, body) == (206, DATA[start : end + 1])
        assert h["Content-Range"] == f"bytes {start}-{end}/{len(DATA)}"
        assert h["Content-Length"] == str(end - start + 1)
    status, h, body = fetch(url, Range="bytes=300000-")
    assert (status, h["Content-Range"], body) == (416, "bytes */300000", b"")
    assert fetch(url, **{"If-None-Match": h["ETag"]})[0] == 304
    assert fetch(server.url("model/b c.bin"), Range="bytes=0-3")[2] == SMALL[:4]


def test_log(server: RangeServer) -> None:
    fetch(server.url("model/a.bin"), Range="bytes=0-99")
    fetch(server.url("model/a.bin"), "HEAD")
    fetch(server.url("top.bin"))
    reqs = server.requests("model/a.bin")
    assert [(r.method, r.range, r.status, r.sent) for r in reqs] == [
        ("GET", "bytes=0-99", 206, 100), ("HEAD", None, 200, 0)]
    assert server.bytes_sent("model/a.bin") == 100
    assert server.bytes_sent() == 100 + len(SMALL) and len(server.requests()) == 3
    server.clear()
    assert server.requests() == [] and server.bytes_sent() == 0


def test_keep_alive(server: RangeServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for i in range(3):
        conn.request("GET", "/model/a.bin", headers={"Range": f"bytes={i}-{i}"})
        assert conn.getresponse().read() == DATA[i : i + 1]
    conn.close()
    assert len({r.port for r in server.requests()}) == 1


def test_folders_listing_and_missing(server: RangeServer) -> None:
    assert fetch(server.url("model"))[0] == 404
    assert fetch(server.url("model/"))[0] == 404
    assert fetch(server.url("nope.bin"))[0] == 404
    assert fetch(server.url("../" + Path(__file__).name))[0] == 404
    _, _, body = fetch(server.url("_list/model"))
    assert json.loads(body) == [{"name": "model/a.bin", "size": len(DATA)},
                                {"name": "model/b c.bin", "size": len(SMALL)}]
    assert len(json.loads(fetch(server.url("_list"))[2])) == 3


def test_dict_content_and_put() -> None:
    with RangeServer({"x/y.bin": SMALL}) as s:
        status, h, body = fetch(s.url("x/y.bin"), Range="bytes=-4")
        assert (status, body) == (206, SMALL[-4:])
        assert json.loads(fetch(s.url("_list/x"))[2]) == [{"name": "x/y.bin", "size": 1024}]
        s.put("x/y.bin", b"new")
        status, h2, body = fetch(s.url("x/y.bin"))
        assert (body, h2["Content-Length"]) == (b"new", "3") and h2["ETag"] != h["ETag"]


def test_ignore_range(server: RangeServer) -> None:
    server.ignore_range = {"top.bin"}
    status, h, body = fetch(server.url("top.bin"), Range="bytes=0-9")
    assert (status, body, "Accept-Ranges" in h, "Content-Range" in h) == (200, SMALL, False, False)
    assert fetch(server.url("model/a.bin"), Range="bytes=0-9")[0] == 206
    server.ignore_range = True
    assert fetch(server.url("model/a.bin"), Range="bytes=0-9")[0] == 200


def test_fail_first(server: RangeServer) -> None:
    server.fail_first = {"top.bin": [503, 500, 403]}
    statuses = [fetch(server.url("top.bin"))[0] for _ in range(5)]
    assert statuses == [503, 500, 403, 200, 200]
    assert fetch(server.url("model/a.bin"), "HEAD")[0] == 200


def test_change_after() -> None:
    with RangeServer({"f.bin": SMALL}, change_after={"f.bin": 2}, change_grow=10) as s:
        _, h1, _ = fetch(s.url("f.bin"), "HEAD")
        _, h2, body2 = fetch(s.url("f.bin"), Range="bytes=0-3")
        _, h3, body3 = fetch(s.url("f.bin"), Range="bytes=0-3")
        assert h1["ETag"] == h2["ETag"] != h3["ETag"]
        assert body2 == SMALL[:4] and body3 == bytes(b ^ 0xFF for b in SMALL[:4])
        assert h3["Content-Range"] == "bytes 0-3/1034"
        assert fetch(s.url("f.bin"))[2][-10:] == bytes(10)  # changes once only
        assert h1["Last-Modified"] != h3["Last-Modified"]


def test_drop_after_bytes(server: RangeServer) -> None:
    server.drop_after_bytes = {"model/a.bin": 1000}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/model/a.bin")
    with pytest.raises(http.client.IncompleteRead) as e:
        conn.getresponse().read()
    conn.close()
    assert len(e.value.partial) == 1000
    assert server.requests()[-1].sent == 1000
    assert fetch(server.url("top.bin"))[2] == SMALL  # other paths are unaffected


# -- fsspec's HTTPFileSystem (aiohttp) ------------------------------------------------------


@pytest.fixture
def fs():
    fsspec = pytest.importorskip("fsspec")
    pytest.importorskip("aiohttp")
    return fsspec.filesystem("http", skip_instance_cache=True)


def test_fsspec_open_seek_end_read(server: RangeServer, fs) -> None:
    with fs.open(server.url("model/a.bin"), block_size=2**16) as f:
        f.seek(-100, os.SEEK_END)
        assert f.read(100) == DATA[-100:]
    # fsspec 2026.9: open() does one HEAD (the size); the read is one ranged GET of just the
    # 100 bytes (its readahead block is capped at the file's end); one connection throughout
    reqs = server.requests()
    assert [(r.method, r.range, r.status) for r in reqs] == [
        ("HEAD", None, 200), ("GET", f"bytes={len(DATA) - 100}-{len(DATA) - 1}", 206)]
    assert server.bytes_sent() == 100 and len({r.port for r in reqs}) == 1


def test_fsspec_reads_blocks_never_the_whole_file(server: RangeServer, fs) -> None:
    with fs.open(server.url("model/a.bin"), block_size=2**12) as f:
        f.seek(1000)
        assert f.read(100) == DATA[1000:1100]
        assert f.read(100) == DATA[1100:1200]  # from the readahead block: no request
        f.seek(200_000)
        assert f.read(10) == DATA[200_000:200_010]
    gets = [r for r in server.requests() if r.method == "GET"]
    assert [r.range for r in gets] == ["bytes=1000-5195", "bytes=200000-204105"]
    assert all(r.status == 206 for r in gets)
    assert server.bytes_sent() < len(DATA) // 10
    # cat_file with start/end is a single ranged GET, no HEAD
    server.clear()
    assert fs.cat_file(server.url("model/a.bin"), start=10, end=20) == DATA[10:20]
    assert [(r.method, r.range) for r in server.requests()] == [("GET", "bytes=10-19")]


def test_fsspec_against_faults(server: RangeServer, fs) -> None:
    """What fsspec itself does, which the RemoteSource must handle on top of it."""
    url = server.url("model/a.bin")
    server.ignore_range = True
    with pytest.raises(ValueError, match="support range requests"), fs.open(url) as f:
        f.seek(500)
        f.read(10)
    # cat_file does not check: a 200 for a ranged GET returns the whole file
    assert fs.cat_file(url, start=10, end=20) == DATA
    server.ignore_range = False
    server.fail_first = {"model/a.bin": [503]}  # no retry of 5xx in fsspec
    with pytest.raises(Exception, match="503"):
        fs.cat_file(url, start=0, end=10)
    assert fs.cat_file(url, start=0, end=10) == DATA[:10]
    # a dropped connection is an aiohttp ClientPayloadError (a ClientError), not retried
    server.drop_after_bytes = 1000
    with pytest.raises(Exception, match="Not enough data"):
        fs.cat_file(url, start=0, end=5000)
    server.drop_after_bytes = None
    # a change between the HEAD and the GET goes unnoticed: new bytes, no error
    server.change_after = {"model/a.bin": 1}
    with fs.open(url, block_size=4096) as f:
        f.seek(1000)
        assert f.read(4) == bytes(b ^ 0xFF for b in DATA[1000:1004])
