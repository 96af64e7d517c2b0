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
from time import monotonic, sleep
from typing import Callable, Iterable

from ..errors import DataFileError, InputError
from ..validation import check_positive

USER_AGENT = "gpubackprop (Python urllib)"
CHUNK = 1 << 16
#: Default largest body :func:`fetch` accepts, in bytes (1 GiB).
MAX_DOWNLOAD_BYTES = 1 << 30
#: Default seconds one :func:`fetch` may take in all, every mirror and retry included.
DEADLINE = 600.0


class _BadDownload(Exception):
    """The transfer broke off (a body shorter than announced); worth retrying."""


class _WrongFile(Exception):
    """The server sent a whole file that is not the one wanted (checksum, size):
    asking the same URL again would give the same answer, so it is not retried."""


class _OutOfTime(Exception):
    """The overall deadline passed."""


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of the bytes of ``path``."""
    return _file_digest(path, "sha256")


def fetch(urls: str | Iterable[str], dest: str | os.PathLike, sha256: str | None = None,
          md5: str | None = None, *, sha256_of: Callable[[Path], str] = file_sha256,
          retries: int = 3, backoff: float = 1.0, timeout: float = 30.0,
          deadline: float = DEADLINE, max_bytes: int = MAX_DOWNLOAD_BYTES,
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
        times. Connection errors, truncated bodies and HTTP 408/429/5xx are
        retried. A checksum mismatch, a damaged gzip, a body over
        ``max_bytes`` and other HTTP errors drop that URL: the server sent
        a whole answer, and asking again would give the same one.
    backoff : float
        Seconds to wait after the first failed round, doubled after each next one.
    timeout : float
        Seconds without an answer before a request fails (per read).
    deadline : float
        Seconds the whole call may take, every mirror, retry and pause included
        (default :data:`DEADLINE`); a server that trickles bytes cannot hold it
        longer. Checked between reads, so the call ends at most one read wait
        (``timeout``, or the time left when a request starts) after it.
    max_bytes : int
        Largest body accepted (default :data:`MAX_DOWNLOAD_BYTES`): a larger
        Content-Length is refused before the body is read, and a body that
        grows past it is cut off.
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
    deadline = check_positive(deadline, "deadline")
    max_bytes = check_positive(max_bytes, "max_bytes", integer=True)
    give_up = monotonic() + deadline
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
                pause = backoff * 2 ** (round_ - 1)
                if monotonic() + pause >= give_up:
                    break
                sleep(pause)
            for url in list(live):
                try:
                    _download(url, temp, timeout, give_up, max_bytes, progress, dest.name)
                    _verify(temp, sha256, md5, sha256_of)
                except urllib.error.HTTPError as exc:
                    failures[url] = f"HTTP {exc.code} {exc.reason}"
                    if exc.code < 500 and exc.code not in (408, 429):
                        live.remove(url)
                except DataFileError as exc:  # from sha256_of: the download is damaged
                    failures[url] = str(exc).replace(str(temp), "the download")
                    live.remove(url)
                except _WrongFile as exc:
                    failures[url] = str(exc)
                    live.remove(url)
                except _OutOfTime as exc:
                    failures[url] = str(exc)
                    break
                except (OSError, http.client.HTTPException, _BadDownload) as exc:
                    failures[url] = _describe(exc)
                else:
                    os.replace(temp, dest)
                    return dest
                if monotonic() >= give_up:
                    break
            if not live or monotonic() >= give_up:
                break
    finally:
        temp.unlink(missing_ok=True)
    report = "\n".join(f"  {url}: {problem}" for url, problem in failures.items())
    late = f" within the {deadline:g} s deadline" if monotonic() >= give_up else ""
    raise DataFileError(f"could not download {dest.name} to {dest.parent}{late}; last "
                        f"problem at each URL:\n{report}")


def _download(url: str, temp: Path, timeout: float, give_up: float, max_bytes: int,
              progress: bool, label: str) -> None:
    """Write the body at ``url`` to ``temp`` (truncated first) and fsync it.

    ``HTTPResponse.read(n)`` returns a short body without complaint when the
    connection closes early, so the length is checked here. ``give_up`` is
    the ``time.monotonic()`` by which the body must have arrived: it is
    checked between reads, and no read waits longer than the time left when
    the request was made.
    """
    left = give_up - monotonic()
    if left <= 0:
        raise _OutOfTime("the deadline passed before this URL was tried")
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=min(timeout, left)) as response, \
            open(temp, "wb") as out:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        if expected is not None and expected > max_bytes:
            raise _WrongFile(f"the server announces {expected} bytes, over the limit of "
                             f"{max_bytes}")
        received = 0
        show = progress and sys.stderr.isatty()
        from tqdm import tqdm  # only when a download happens

        with tqdm(total=expected, unit="B", unit_scale=True, desc=label,
                  disable=not show, leave=False) as bar:
            while chunk := _read_before(response, give_up, received):
                out.write(chunk)
                received += len(chunk)
                if received > max_bytes:
                    raise _WrongFile(f"the body grew past the limit of {max_bytes} bytes")
                bar.update(len(chunk))
        out.flush()
        os.fsync(out.fileno())
    if expected is not None and received != expected:
        raise _BadDownload(f"truncated: expected {expected} bytes, got {received}")


def _read_before(response, give_up: float, received: int) -> bytes:
    """The next piece of the body, unless the ``time.monotonic()`` ``give_up`` has passed.

    ``read1`` returns whatever has arrived (up to :data:`CHUNK`) after at most
    one wait of the per-read timeout, so a server trickling bytes is caught
    here within one such wait of the deadline.
    """
    if monotonic() >= give_up:
        raise _OutOfTime(f"the deadline passed after {received} bytes of the body")
    return response.read1(CHUNK)


def _verify(path: Path, sha256: str | None, md5: str | None,
            sha256_of: Callable[[Path], str]) -> None:
    if md5 is not None:
        actual = _file_digest(path, "md5")
        if actual != md5.lower():
            raise _WrongFile(f"md5 mismatch: expected {md5.lower()}, got {actual}")
    if sha256 is not None:
        actual = sha256_of(path)
        if actual != sha256.lower():
            raise _WrongFile(f"sha256 mismatch: expected {sha256.lower()}, got {actual}")


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
