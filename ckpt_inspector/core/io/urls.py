"""What a URL is, and the credentials one may carry: shown nowhere, used only where a
request is made."""

from __future__ import annotations


def is_url(path: object) -> bool:
    """``scheme://…`` (a Windows path such as ``C:\\x`` has no ``//``)."""
    if not isinstance(path, str):
        return False
    scheme, sep, _rest = path.partition("://")
    return bool(sep) and scheme.isascii() and scheme[:1].isalpha() and \
        all(c.isalnum() or c in "+.-" for c in scheme)


# credentials given in a URL (``https://user:pass@host/...``): what is shown is the URL with
# ``***`` in their place; the real one is looked up only where a request is made
_hidden: dict[tuple[str, str], str] = {}  # (scheme, host[:port]) -> "user:pass@host[:port]"


def redact(url: str) -> str:
    """``url`` without the credentials it carries (``scheme://***@host/...``), which are
    kept in this process for :func:`unredact`; any other string as it is."""
    if not is_url(url):
        return url
    scheme, _sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if not at or userinfo == "***":
        return url
    _hidden[(scheme.lower(), host)] = netloc
    return f"{scheme}://***@{host}{slash}{tail}"


def unredact(url: str) -> str:
    """The URL to request for one :func:`redact` gave (or any URL under it)."""
    scheme, sep, rest = url.partition("://")
    if not sep or not rest.startswith("***@"):
        return url
    netloc, slash, tail = rest.partition("/")
    real = _hidden.get((scheme.lower(), netloc[4:]))
    return f"{scheme}://{real}{slash}{tail}" if real else url
