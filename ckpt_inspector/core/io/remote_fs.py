"""Which library reads a URL, and its failures in one line: the fsspec filesystem for each
scheme (``http(s)`` with aiohttp, ``s3`` s3fs, ``gs`` gcsfs, ``hf`` huggingface_hub), the
timeout of HTTP, the words for a refused or failed request (naming the credential a
refusal asks for), and the tries again of a transient failure."""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.io.cancel import check_cancelled
from ckpt_inspector.core.io.urls import unredact

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# scheme -> (module fsspec needs, the extra that installs it)
SCHEMES = {"http": ("aiohttp", None), "https": ("aiohttp", None),
           "s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
           "hf": ("huggingface_hub", None)}
RETRIES = (0.2, 0.8, 2.0)  # seconds before each new try of a transient failure


def scheme_of(url: str) -> str:
    m = _URL.match(url)
    return m.group(1).lower() if m else ""


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` and the path within it. Each library configures
    itself as usual: for an S3-compatible store (MinIO, R2, moto) botocore reads
    ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, and fsspec ``FSSPEC_S3_ENDPOINT_URL``."""
    url = unredact(url)  # what is shown hides the credentials; the request carries them
    scheme = scheme_of(url)
    if scheme not in SCHEMES:
        raise CheckpointError(f"{scheme}:// URLs are not supported (http, https, s3, gs, hf)")
    module, extra = SCHEMES[scheme]
    try:
        import fsspec

        __import__(module)
        if scheme in ("http", "https"):  # a server that stops answering fails, in time
            import aiohttp

            wait = timeout_s()
            return fsspec.core.url_to_fs(url, client_kwargs={"timeout": aiohttp.ClientTimeout(
                total=None, sock_connect=wait, sock_read=wait)})
        if module == "gcsfs":
            return _gcs(url)
        if module == "s3fs":
            fs = _s3_class()(**_s3_config())
            return fs, fs._strip_protocol(url)
        return fsspec.core.url_to_fs(url)
    except ImportError:
        how = f"pip install 'ckpt-inspector[{extra}]'" if extra else f"pip install {module}"
        raise CheckpointError(f"{scheme}:// needs the {module} package: {how}") from None


def _gcs(url: str) -> tuple[Any, str]:
    """gcsfs's plain JSON-API filesystem. Its default class first asks a gRPC control
    plane for each bucket's layout (a minute lost where it cannot be reached, and pages of
    warnings), which reading objects by range does not need. Against an emulator
    (``STORAGE_EMULATOR_HOST``: fake-gcs-server, the tests' fake) every request goes to
    that host and credentials are anonymous unless the user names some
    (``GOOGLE_APPLICATION_CREDENTIALS``, or fsspec's ``FSSPEC_GCS_TOKEN``); elsewhere
    Google's own credential chain applies. The libraries' log lines stay out of the one
    line an error is. gcsfs's own tries again of every failed request (six, over about 35
    seconds, even where nothing answers) are left to :func:`with_retries`."""
    import logging

    import fsspec.config

    for name in ("gcsfs", "google", "google.auth", "google.api_core"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    emulated = os.environ.get("STORAGE_EMULATOR_HOST", "default") != "default"
    named = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or any(
        "token" in fsspec.config.conf.get(p, {}) for p in ("gs", "gcs"))
    fs = _gcs_class()(**({"token": "anon"} if emulated and not named else {}))
    return fs, fs._strip_protocol(url)


_asked: Counter[str] = Counter()  # "bucket/key" -> requests the libraries sent about it
_asked_lock = threading.Lock()


def asked(path: str) -> int:
    """How many requests s3fs or gcsfs has sent about the object ``bucket/key`` (its
    metadata, a listing of ``key/``, its bytes) in this process: what an open costs is the
    difference before and after (gcsfs's ``info`` is two or three requests, s3fs's one, or
    none where a listing already said)."""
    with _asked_lock:
        return _asked[path.strip("/")]


def _count(name: str) -> None:
    with _asked_lock:
        _asked[name.strip("/")] += 1


_MEDIA = re.compile(r"/b/([^/?]+)/o/([^?]+)")
_GCS_CLASS: Any = None
_S3_CLASS: Any = None


def _gcs_object(path: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    from urllib.parse import unquote

    if path.startswith("http"):  # a download: .../b/{bucket}/o/{quoted key}?alt=media
        m = _MEDIA.search(path)
        return f"{unquote(m.group(1))}/{unquote(m.group(2))}" if m else ""
    if path.endswith("/o") and args:  # a listing
        return f"{args[0]}/{kwargs.get('prefix') or ''}"
    return "/".join(str(a) for a in args)


def _gcs_class() -> Any:
    """``GCSFileSystem`` whose requests are each tried once (its ``_request`` without the
    ``retry_request`` decorator's six tries) and counted (:func:`asked`)."""
    global _GCS_CLASS
    if _GCS_CLASS is None:
        import gcsfs.core
        from gcsfs.retry import retry_request

        base = gcsfs.core.GCSFileSystem
        once = retry_request(retries=1)(base._request.__wrapped__)

        async def _request(self: Any, method: str, path: str, *args: Any,
                           **kwargs: Any) -> Any:
            _count(_gcs_object(path, args, kwargs))
            return await once(self, method, path, *args, **kwargs)

        _GCS_CLASS = type("OneTryGCSFileSystem", (base,), {"_request": _request})
    return _GCS_CLASS


def forget_filesystems() -> None:
    """Drop the S3 and GCS filesystems made so far (each keeps its endpoint and
    credentials): the next URL makes new ones from the configuration as it is now."""
    for cls in (_S3_CLASS, _GCS_CLASS):
        if cls is not None:
            cls.clear_instance_cache()


def _s3_class() -> Any:
    """``S3FileSystem`` that tries each call once (s3fs's own five tries again are left to
    :func:`with_retries`) and counts it (:func:`asked`)."""
    global _S3_CLASS
    if _S3_CLASS is None:
        import s3fs

        base = s3fs.S3FileSystem

        async def _call_s3(self: Any, method: str, *akwarglist: Any, **kwargs: Any) -> Any:
            key = kwargs.get("Key") if "Key" in kwargs else kwargs.get("Prefix", "")
            _count(f"{kwargs.get('Bucket', '')}/{key or ''}")
            return await base._call_s3(self, method, *akwarglist, **kwargs)

        _S3_CLASS = type("OneTryS3FileSystem", (base,), {"_call_s3": _call_s3, "retries": 1})
    return _S3_CLASS


def _s3_config() -> dict[str, Any]:
    """Each request tried once by botocore (which would otherwise try a connection that
    fails five times, and s3fs five more: 12 s where nothing answers); :func:`with_retries`
    tries again what is transient. A user's own ``AWS_MAX_ATTEMPTS`` is left to botocore."""
    if os.environ.get("AWS_MAX_ATTEMPTS"):
        return {}
    return {"config_kwargs": {"retries": {"max_attempts": 1}}}


def timeout_s() -> float:
    """Seconds to wait for a connection or for the next bytes of an answer (HTTP):
    ``CKPT_INSPECTOR_TIMEOUT``, 60 by default."""
    try:
        return max(float(os.environ.get("CKPT_INSPECTOR_TIMEOUT", "60")), 0.1)
    except ValueError:
        return 60.0


def describe_error(err: BaseException, url: str) -> str:
    """One line for a failed request, naming the credential a refusal asks for."""
    status = getattr(err, "status", None) or getattr(err, "code", None)
    scheme = scheme_of(url)
    if isinstance(err, FileNotFoundError) or status == 404:
        if scheme in ("s3", "gs", "gcs") and re.search(
                r"bucket does not exist|nosuchbucket", str(err).lower()):
            return "no such bucket (404)"  # s3fs: "The specified bucket does not exist"
        return "no such file at that URL (404)"
    if isinstance(err, PermissionError) or status in (401, 403) or (
            isinstance(err, OSError) and str(err).startswith("Forbidden")):  # gcsfs's 403
        who = {"hf": "a Hugging Face token (HF_TOKEN or `hf auth login`)",
               "s3": "AWS credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID, or the instance role)",
               "gs": "Google credentials (GOOGLE_APPLICATION_CREDENTIALS or gcloud auth)",
               }.get("gs" if scheme == "gcs" else scheme, "credentials the server accepts")
        return f"access denied ({status or 'forbidden'}): it needs {who}"
    if status == 412 or type(err).__name__ == "FileExpired":  # s3fs's If-Match refusal
        return "the file changed on the server while it was being read"
    if isinstance(err, TimeoutError) or "timeout" in type(err).__name__.lower():
        return "the server did not answer in time"
    kind = type(err).__name__
    if kind in ("ClientPayloadError", "ContentLengthError", "ServerDisconnectedError") or \
            "dropped" in str(err):
        return "the connection dropped in the middle of an answer (each try alike)"
    if kind in ("ClientConnectorError", "ClientConnectorDNSError", "ConnectionRefusedError",
                "EndpointConnectionError"):
        return f"cannot connect to the server: {str(err).splitlines()[0][:160]}"
    text = str(err).splitlines()[0] if str(err) else kind
    if "range" in text.lower():
        return "the server does not answer byte-range requests: download the file first"
    return f"cannot read the URL: {text[:200]}"


def _transient(err: BaseException) -> bool:
    status = getattr(err, "status", None) or getattr(err, "code", None)
    if isinstance(status, int):
        return status >= 500 or status == 429
    # a dropped connection is tried again; a server that did not answer in time is not
    # (each try would wait the whole timeout again)
    return (isinstance(err, ConnectionError) and not isinstance(err, TimeoutError)) or \
        type(err).__name__ in ("ServerDisconnectedError", "ClientOSError", "ClientPayloadError")


class ServerError(CheckpointError):
    """A failure of the server rather than of one file: no byte ranges, a refusal of the
    credentials, no answer in time, errors that trying again did not cure. A model made of
    several files stops on it (each file would fail alike) instead of showing every file
    damaged."""


def failure(err: BaseException, url: str) -> CheckpointError:
    """The one-line error for a failed request: a missing or changed file is that file's
    problem; anything else is the server's (:class:`ServerError`)."""
    status = getattr(err, "status", None) or getattr(err, "code", None)
    message = describe_error(err, url)
    if isinstance(err, FileNotFoundError) or status in (404, 412) or "changed" in message:
        return CheckpointError(message)
    return ServerError(message)


def with_retries(call: Callable[[], Any], url: str) -> Any:
    for delay in (*RETRIES, None):
        try:
            return call()
        except CheckpointError:
            raise
        except Exception as err:  # every library raises its own kinds
            if delay is None or not _transient(err):
                raise failure(err, url) from None
            time.sleep(delay)
            check_cancelled()
    raise AssertionError("unreachable")


