"""Shared storage for sweep state: a local folder, or S3 so that a new head node can resume.

``WHICHMODEL_STORAGE=s3://bucket/prefix`` moves what a sweep needs to continue off the head
node: Ray Tune's experiment state (``<storage>/tune/``, through Tune's own pyarrow filesystem),
the sweep's state file (``<storage>/sweeps/<name>.json``, what ``whichmodel resume NAME`` reads)
and the probes' feature caches (``<storage>/features/<sweep>/<model>/<task>.npz``). Unset, all of
it stays under ``$WHICHMODEL_HOME``. An S3-compatible endpoint is given the usual way
(``AWS_ENDPOINT_URL``, read by boto3 and pyarrow), credentials by the usual AWS variables or the
node's instance role; none of them is ever written into the state.
"""

from __future__ import annotations

import os
from pathlib import Path

from whichmodel.errors import WhichModelError
from whichmodel.files import atomic_write

ENV = "WHICHMODEL_STORAGE"


def storage_uri() -> str | None:
    uri = os.environ.get(ENV, "").strip()
    if not uri:
        return None
    if not uri.startswith("s3://") or len(uri) <= len("s3://"):
        raise WhichModelError(f"{ENV}={uri!r}: write s3://BUCKET[/PREFIX] (or unset it to keep "
                              "sweep state under WHICHMODEL_HOME)")
    return uri.rstrip("/")


def is_remote(location: str | os.PathLike) -> bool:
    return str(location).startswith("s3://")


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def _client():
    import boto3

    return boto3.client("s3")


def read_text(location: str | os.PathLike) -> str:
    """The text at a local path or an s3:// URI; FileNotFoundError when there is none."""
    if not is_remote(location):
        return Path(location).read_text()
    bucket, key = _split(str(location))
    try:
        body = _client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NoSuchBucket"):
            raise FileNotFoundError(str(location)) from None
        raise WhichModelError(f"{location}: cannot read ({type(exc).__name__}: {exc})") from None
    return body.decode()


def write_text(location: str | os.PathLike, text: str) -> None:
    """Write atomically: a local rename, or one S3 PUT (readers see the old or the new)."""
    if not is_remote(location):
        atomic_write(location, text)
        return
    bucket, key = _split(str(location))
    try:
        _client().put_object(Bucket=bucket, Key=key, Body=text.encode())
    except Exception as exc:
        raise WhichModelError(f"{location}: cannot write ({type(exc).__name__}: {exc}); check "
                              f"the bucket and the AWS credentials of this node") from None


def upload_file(path: str | os.PathLike, location: str) -> str:
    """Copy a local file to an s3:// URI; returns the URI."""
    bucket, key = _split(location)
    _client().upload_file(str(path), bucket, key)
    return location


def download_file(location: str, path: str | os.PathLike) -> Path:
    """Copy an s3:// URI to a local file; FileNotFoundError when there is no such object."""
    bucket, key = _split(location)
    try:
        _client().download_file(bucket, key, str(path))
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NoSuchBucket"):
            raise FileNotFoundError(location) from None
        raise WhichModelError(f"{location}: cannot read ({type(exc).__name__}: {exc})") from None
    return Path(path)


def join(base: str | os.PathLike, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *parts])
