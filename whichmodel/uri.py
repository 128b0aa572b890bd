"""One URI redactor: what whichmodel prints or logs of a URI never holds its credentials."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact_uri(uri: str) -> str:
    """``scheme://user:password@host/path`` -> ``scheme://***@host/path``; other URIs as given."""
    uri = str(uri)
    if "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:  # not parseable as a URL: cut by hand
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}" if "@" in rest else uri
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))
