"""Downloading one file from mirrors, verified and written atomically.

:func:`fetch` tries each mirror in turn, for a bounded number of rounds with a
growing pause between rounds, checks the checksum of what arrived, and only
then moves it under its final name. A failed download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from time import sleep
from typing import Callable, Iterable

from tqdm import tqdm

from ..errors import DataFileError, InputError

USER_AGENT = "gpubackprop (Python urllib)"
CHUNK = 1 << 16


class _BadDownload(Exception):
    """What arrived is not the file wanted (short or wrong checksum); worth retrying."""


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of the bytes of ``path``."""
    return _file_digest(path, "sha256")


def fetch(urls: str | Iterable[str], dest: str | os.PathLike, sha256: str | None = None,
          md5: str | None = None, *, sha256_of: Callable[[Path], str] = file_sha256,
          retries: int = 3, backoff: float = 1.0, timeout: float = 30.0,
          progress: bool = True) -> Path:
    """Download a file from the first mirror that serves it intact.

    Parameters
    ----------
    urls : str or iterable of str
        Mirrors of the same file, tried in this order in each round.
    dest : str or path
        Final file name; its folder is created if missing. The download goes
        to a temporary file in the same folder and is moved to ``dest`` with
        ``os.replace`` only after the checksums match.
    sha256, md5 : str, optional
        Expected hex digests. ``md5`` is of the downloaded bytes; ``sha256`` is
        of whatever ``sha256_of`` computes.
    sha256_of : callable(path) -> str
        Computes the sha256 of the downloaded file; the default hashes its
        bytes, :func:`gpubackprop.data.idx.content_sha256` hashes its gunzipped content.
    retries : int
        Rounds after the first: each URL is requested at most ``1 + retries``
        times. Connection errors, truncated bodies, HTTP 408/429/5xx and
        checksum mismatches are retried; other HTTP errors drop that URL.
    backoff : float
        Seconds to wait after the first failed round, doubled after each next one.
    timeout : float
        Seconds without an answer before a request fails.
    progress : bool
        Show a tqdm progress bar on stderr when it is a terminal.

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    DataFileError
        No URL gave a good file; the message names each URL and its last
        problem, including expected and actual checksums.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise InputError("fetch needs at least one URL")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InputError(f"retries must be an integer >= 0, got {retries!r}")
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part",
                                             dir=dest.parent)
    except OSError as exc:
        raise DataFileError(f"cannot write {dest}: {exc}") from None
    os.close(handle)
    temp = Path(temp_name)
    failures: dict[str, str] = {}
    live = list(urls)
    try:
        for round_ in range(retries + 1):
            if round_:
                sleep(backoff * 2 ** (round_ - 1))
            for url in list(live):
                try:
                    _download(url, temp, timeout, progress, dest.name)
                    _verify(temp, sha256, md5, sha256_of)
                except urllib.error.HTTPError as exc:
                    failures[url] = f"HTTP {exc.code} {exc.reason}"
                    if exc.code < 500 and exc.code not in (408, 429):
                        live.remove(url)
                except DataFileError as exc:  # from sha256_of: the download is damaged
                    failures[url] = str(exc).replace(str(temp), "the download")
                except (OSError, http.client.HTTPException, _BadDownload) as exc:
                    failures[url] = _describe(exc)
                else:
                    os.replace(temp, dest)
                    return dest
            if not live:
                break
    finally:
        temp.unlink(missing_ok=True)
    report = "\n".join(f"  {url}: {problem}" for url, problem in failures.items())
    raise DataFileError(f"could not download {dest.name} to {dest.parent}; last problem "
                        f"at each URL:\n{report}")


def _download(url: str, temp: Path, timeout: float, progress: bool, label: str) -> None:
    """Write the body at ``url`` to ``temp`` (truncated first) and fsync it.

    ``HTTPResponse.read(n)`` returns a short body without complaint when the
    connection closes early, so the length is checked here.
    """
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response, \
            open(temp, "wb") as out:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        received = 0
        show = progress and sys.stderr.isatty()
        with tqdm(total=expected, unit="B", unit_scale=True, desc=label,
                  disable=not show, leave=False) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        out.flush()
        os.fsync(out.fileno())
    if expected is not None and received != expected:
        raise _BadDownload(f"truncated: expected {expected} bytes, got {received}")


def _verify(path: Path, sha256: str | None, md5: str | None,
            sha256_of: Callable[[Path], str]) -> None:
    if md5 is not None:
        actual = _file_digest(path, "md5")
        if actual != md5.lower():
            raise _BadDownload(f"md5 mismatch: expected {md5.lower()}, got {actual}")
    if sha256 is not None:
        actual = sha256_of(path)
        if actual != sha256.lower():
            raise _BadDownload(f"sha256 mismatch: expected {sha256.lower()}, got {actual}")


def _file_digest(path: str | os.PathLike, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _describe(exc: Exception) -> str:
    if isinstance(exc, urllib.error.URLError):
        return f"connection failed: {exc.reason}"
    return str(exc) or type(exc).__name__
