"""URLs of object stores and local folders: which is which, how to join them, what `out=` means.

A location is a local path (`/data/mds`, `relative/dir`, `file:///data/mds`) or a URL with a
scheme (`s3://bucket/prefix`). Object keys are taken literally: `s3://b/a b/c` is key `a b/c`.
"""

from __future__ import annotations

import os
import tempfile

__all__ = ["is_remote", "join_url", "local_path_of", "parse_out", "scheme_of", "split_bucket"]


def scheme_of(url: str) -> str:
    """The scheme of `url` in lower case, or `""` for a plain path (`s3://b/k` -> `"s3"`)."""
    head, sep, _ = url.partition("://")
    if not sep or not head.replace("+", "").replace("-", "").replace(".", "").isalnum():
        return ""
    return head.lower()


def is_remote(url: str | os.PathLike[str]) -> bool:
    """True for an object-store URL (`s3://...`); False for a local path or a `file://` URL."""
    return scheme_of(os.fspath(url)) not in ("", "file")


def local_path_of(url: str | os.PathLike[str]) -> str:
    """The filesystem path of a local location: a path as given, or the path of `file:///path`."""
    text = os.fspath(url)
    scheme = scheme_of(text)
    if scheme == "":
        return text
    if scheme != "file":
        raise ValueError(f"expected a local path or a file:// URL, got {text!r}")
    rest = text.partition("://")[2]
    host, slash, path = rest.partition("/")
    if host not in ("", "localhost"):
        raise ValueError(
            f"file URL {text!r} names host {host!r}; expected file:///absolute/path "
            "(only local files can be read)"
        )
    return slash + path


def join_url(base: str, name: str) -> str:
    """`base` + `/` + `name` for URLs, `os.path.join` for local paths."""
    if scheme_of(base) == "":
        return os.path.join(base, name)
    return f"{base.rstrip('/')}/{name.lstrip('/')}"


def split_bucket(url: str) -> tuple[str, str]:
    """`scheme://bucket/key/parts` -> (`bucket`, `key/parts`); the key may be empty."""
    rest = url.partition("://")[2]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"URL {url!r} names no bucket; expected {scheme_of(url)}://bucket/key")
    return bucket, key


def parse_out(out: str | os.PathLike[str] | tuple[str, str | None]) -> tuple[str, str | None]:
    """Where a writer puts its files: (local folder, remote URL or None).

    - a local path (or `file://` URL) -> (that path, None)
    - a remote URL -> (a fresh temporary folder from `tempfile.mkdtemp`, the URL); the writer
      uploads from there, so two writers never share a staging folder
    - a pair (local, remote) -> (local, remote), the remote checked like a URL above
    """
    if isinstance(out, tuple | list):
        if len(out) != 2 or not isinstance(out[0], str | os.PathLike):
            raise TypeError(f"out as a pair must be (local path, remote URL); got {out!r}")
        local, remote = out
        if remote is None:
            return local_path_of(local), None
        if not isinstance(remote, str | os.PathLike):
            raise TypeError(f"the remote of out must be a str URL or None; got {remote!r}")
        remote = os.fspath(remote)
        _check_scheme(remote)
        return local_path_of(local), remote
    if not isinstance(out, str | os.PathLike):
        raise TypeError(
            f"out must be a local path, a remote URL or a (local, remote) pair; got {out!r}"
        )
    text = os.fspath(out)
    if is_remote(text):
        _check_scheme(text)
        return tempfile.mkdtemp(prefix="streaming-out-"), text
    return local_path_of(text), None


def _check_scheme(url: str) -> None:
    """Raise ValueError now (not at the first upload) for a scheme no store handles."""
    from streaming.storage.stores import store_class

    store_class(url)
