"""One file on the Hugging Face Hub, ``hf://owner/repo[@revision]/path/in/repo`` (datasets
and spaces with their ``datasets/`` or ``spaces/`` prefix), read by byte range.

One ranged GET of the file's ``resolve`` URL at the revision named gives the commit the
revision points at (``X-Repo-Commit``, as ``huggingface_hub.get_hf_file_metadata`` reads
it), the file's size, its ETag and its last bytes; every read after it asks for
``resolve/<commit sha>/…``, so a branch that moves while the file is read cannot mix two
versions. The token is the library's own (``HF_TOKEN``, or the one ``hf auth login`` saved);
it is sent in the ``Authorization`` header only and never appears in a message.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from ckpt_inspector.core.errors import CheckpointError

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class HubError(Exception):
    """A Hub answer that is not the file, carrying its HTTP ``status`` (what
    ``remote.describe_error`` and the retries read), without the library's long message."""

    def __init__(self, status: int | None, text: str):
        super().__init__(text)
        self.status = status


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(...)`` with the library's errors turned into :class:`HubError` or the built-in
    kinds the retries know (a dropped connection, a timeout)."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        return fn(*args, **kwargs)
    except OfflineModeIsEnabled:
        raise CheckpointError("HF_HUB_OFFLINE is set: hf:// URLs need the network") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        kind = type(err).__name__
        if kind in ("RemoteEntryNotFoundError", "EntryNotFoundError"):
            raise CheckpointError("no such file in that repository (404)") from None
        if kind == "RevisionNotFoundError":
            raise CheckpointError("no such file: the repository has no such revision") from None
        if kind == "RepositoryNotFoundError" and status == 404:
            raise CheckpointError("no such file: no such repository (404)") from None
        if kind in ("RepositoryNotFoundError", "GatedRepoError") and status == 401:
            raise CheckpointError(
                "no such repository, or a private or gated one: access needs a Hugging Face "
                "token (set HF_TOKEN or run `hf auth login`)") from None
        raise HubError(status, f"the Hub answered {status} ({kind})") from None
    except Exception as err:
        name = type(err).__name__
        if "Timeout" in name:
            raise TimeoutError(name) from None
        if name in ("ConnectError", "ReadError", "RemoteProtocolError", "WriteError",
                    "CloseError", "NetworkError"):
            raise ConnectionError(name) from None
        raise


def _parse(url: str) -> Any:
    from huggingface_hub.utils import parse_hf_uri

    uri = parse_hf_uri(url)
    if uri.is_bucket:
        raise CheckpointError("hf:// buckets are not supported")
    return uri


def _file_url(uri: Any, revision: str) -> str:
    """``{endpoint}/[datasets/|spaces/]owner/repo/resolve/{revision}/{path}``: the URL
    ``huggingface_hub.hf_hub_url`` makes, without importing ``file_download`` (and with it
    ``hf_api``: a third of a second of a remote open)."""
    from huggingface_hub import constants

    repo = constants.REPO_TYPES_URL_PREFIXES.get(uri.type, "") + uri.id
    return constants.HUGGINGFACE_CO_URL_TEMPLATE.format(
        repo_id=repo, revision=quote(revision, safe=""), filename=quote(uri.path_in_repo))


def listing(url: str) -> dict[str, dict[str, Any]] | None:
    """``{name: {"name", "size", "type"}}`` of a folder of a repository (its root for
    ``hf://owner/repo[@revision]``) at the revision named: the Hub's tree API, page by page
    (a thousand entries a page), as ``HfApi.list_repo_tree`` asks it (and not
    ``HfFileSystem``, which first asks for the repository's info); None where that path is
    not a folder."""
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers, paginate

    uri = _parse(url)
    folder = uri.path_in_repo.strip("/")
    tree = (f"{constants.ENDPOINT}/api/{uri.type}s/{uri.id}/tree/"
            f"{quote(uri.revision or constants.DEFAULT_REVISION, safe='')}"
            + (f"/{quote(folder, safe='')}" if folder else ""))

    def ls() -> list[dict[str, Any]] | None:
        try:
            return list(paginate(tree, params={"recursive": False, "expand": False},
                                 headers=build_hf_headers()))
        except Exception as err:
            if type(err).__name__ in ("RemoteEntryNotFoundError", "EntryNotFoundError"):
                return None
            raise

    entries = _call(ls)
    if entries is None:
        return None
    inside = [e for e in entries if str(e.get("path", "")).rpartition("/")[0] == folder]
    if not inside and entries:  # a file's path lists that file (as fsspec's listing does)
        inside = entries
    return {str(e["path"]).rpartition("/")[2]: _entry(e) for e in inside}


def _entry(e: dict[str, Any]) -> dict[str, Any]:
    if e.get("type") == "directory":
        return {"name": e["path"], "size": 0, "type": "directory"}
    return {"name": e["path"], "size": e.get("size"), "type": "file"}


def first_bytes(url: str, n: int) -> tuple[str | None, bytes]:
    """The commit and the first ``n`` bytes of the file ``url`` names, at the revision it
    names: one ranged GET, asked beside :class:`HubFile`'s probe where the file is known
    to be larger than the probe's tail (the caller checks that both name one commit)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    uri = _parse(url)
    headers = {**build_hf_headers(), "Range": f"bytes=0-{n - 1}", "Accept-Encoding": "identity"}
    with get_session().stream("GET", _file_url(uri, uri.revision or "main"), headers=headers,
                              timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as r:
        if r.status_code >= 400:
            r.read()
            hf_raise_for_status(r)
        commit = _commit_of(r)
        m = _CONTENT_RANGE.fullmatch(r.headers.get("Content-Range", "").strip())
        if r.status_code != 206 or m is None or int(m.group(1)) != 0:
            raise CheckpointError("the server does not answer byte-range requests: "
                                  "download the file first")  # before the body
        body = b"".join(_limited(r.iter_bytes(), n))
        if len(body) != int(m.group(2)) + 1:
            raise ConnectionError("the connection dropped in the middle of an answer")
        return commit, body


def _commit_of(r: Any) -> str | None:
    """The commit an answer names (``X-Repo-Commit``), on it or on the Hub's redirect to its
    CDN that led to it."""
    return next((h.headers["X-Repo-Commit"] for h in [*r.history, r]
                 if "X-Repo-Commit" in h.headers), None)


def _limited(pieces: Any, n: int) -> Any:
    """An answer's pieces, refused past ``n`` bytes (a server that sends more than was
    asked costs no more memory than the request)."""
    got = 0
    for piece in pieces:
        got += len(piece)
        if got > n:
            raise ConnectionError("the server sent more bytes than were asked for")
        yield piece


class HubFile:
    """``seek`` and ``read`` of one pinned Hub file, each read one ranged GET: what
    ``RemoteFile`` reads through (in place of ``fs.open``). The first request, a GET of the
    last ``tail`` bytes at the revision named, says the commit (``X-Repo-Commit``, also on
    the Hub's redirect to its CDN), the size (``Content-Range``) and the ETag, and brings
    what readers look for at the end (a zip's directory)."""

    def __init__(self, url: str, tail: int):
        uri = _parse(url)
        if not uri.path_in_repo:
            raise CheckpointError("names a whole repository: name a file in it "
                                  "(hf://owner/repo[@revision]/path/in/repo)")
        self.token = None  # the library's own: HF_TOKEN, or what `hf auth login` saved
        self.revision = uri.revision or "main"
        self.commit, self.size, self.etag, self.tail = _call(
            self._probe, _file_url(uri, self.revision), tail)
        self.url = _file_url(uri, self.commit)
        self.pos = 0

    def _headers(self, rng: str) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        return {**build_hf_headers(token=self.token), "Range": rng,
                "Accept-Encoding": "identity"}

    def _probe(self, url: str, tail: int) -> tuple[str, int, str | None, tuple[int, bytes]]:
        from huggingface_hub import constants
        from huggingface_hub.utils import get_session, hf_raise_for_status

        with get_session().stream("GET", url, headers=self._headers(f"bytes=-{tail}"),
                                  timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as r:
            if r.status_code >= 400 and r.status_code != 416:
                r.read()
                hf_raise_for_status(r)
            hops = [*r.history, r]
            commit = _commit_of(r)
            etag = next((h.headers.get("X-Linked-Etag") or h.headers.get("ETag") for h in hops
                         if h.headers.get("X-Linked-Etag") or h.headers.get("ETag")), None)
            if commit is None:
                raise CheckpointError("the Hub did not say which commit the file is at")
            etag = etag.removeprefix("W/").strip('"') if etag else None
            if r.status_code == 416:  # an empty file has no last bytes
                return commit, 0, etag, (0, b"")
            m = _CONTENT_RANGE.fullmatch(r.headers.get("Content-Range", "").strip())
            if r.status_code == 200 and int(r.headers.get("Content-Length", tail + 1)) <= tail:
                body = b"".join(_limited(r.iter_bytes(), tail))
                return commit, len(body), etag, (0, body)
            if r.status_code != 206 or m is None:
                raise CheckpointError("the server does not answer byte-range requests: "
                                      "download the file first")  # before the body
            body = b"".join(_limited(r.iter_bytes(), tail))
            start, total = int(m.group(1)), int(m.group(3))
            if len(body) != int(m.group(2)) - start + 1:
                raise ConnectionError("the connection dropped in the middle of an answer")
            return commit, total, etag, (start, body)

    def seek(self, pos: int) -> None:
        self.pos = pos

    def read(self, n: int) -> bytes:
        from huggingface_hub import constants
        from huggingface_hub.utils import get_session, hf_raise_for_status

        start, end = self.pos, min(self.pos + n, self.size)
        if start >= end:
            return b""
        headers = self._headers(f"bytes={start}-{end - 1}")

        def get() -> bytes:
            with get_session().stream("GET", self.url, headers=headers,
                                      timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as r:
                if r.status_code >= 400:
                    r.read()
                    hf_raise_for_status(r)
                if r.status_code != 206 and not (start == 0 and end == self.size):
                    raise CheckpointError("the server does not answer byte-range requests: "
                                          "download the file first")  # before the body
                return b"".join(_limited(r.iter_bytes(), end - start))

        data: bytes = _call(get)
        self.pos = start + len(data)
        return data

    def close(self) -> None:
        pass
