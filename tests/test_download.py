"""fetch and MNIST download against a real HTTP server on 127.0.0.1.

The server serves the shared IDX folder under a prefix that says how to damage
the reply: /ok/ as is, /cut/ half the body under the full Content-Length,
/short/ half the body with an honest Content-Length, /flip/ one byte inverted,
/gone/ 404, /trickle/ one byte every 20 ms (for at most TRICKLE_SECONDS),
/huge/ a Content-Length of 2 GiB, /endless/ zeros without a Content-Length
(at most ENDLESS_BYTES).
"""

import gzip
import hashlib
import socket
import time
from http.server import BaseHTTPRequestHandler

import pytest

from gpubackprop.data import download, mnist
from gpubackprop.data.datasets import load_mnist
from gpubackprop.data.download import fetch
from gpubackprop.errors import DataFileError
from gpubackprop.data.idx import content_sha256
from local_http import local_http_server

SMALL = "t10k-labels-idx1-ubyte.gz"  # 4.5 kB
TRICKLE_SECONDS = 8.0
ENDLESS_BYTES = 8 << 20


class DamagingHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        mode, _, rest = self.path.lstrip("/").partition("/")
        path = self.server.root / rest
        if mode == "gone" or not path.is_file():
            self.send_error(404)
            return
        if mode in ("trickle", "huge", "endless"):
            self.send_unbounded(mode, path.read_bytes())
            return
        body = path.read_bytes()
        length = len(body)
        if mode in ("cut", "short"):
            body = body[:len(body) // 2]
            length = length if mode == "cut" else len(body)
        elif mode == "flip":
            body = flipped(body)
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)

    def send_unbounded(self, mode: str, body: bytes):
        """Bodies that never end in time or never end in size, each bounded here."""
        self.send_response(200)
        if mode != "endless":
            self.send_header("Content-Length", str(2 << 30 if mode == "huge" else len(body)))
        self.end_headers()
        try:
            if mode == "trickle":
                stop = time.monotonic() + TRICKLE_SECONDS
                for byte in body:
                    if time.monotonic() > stop:
                        break
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.02)
            else:
                for _ in range(ENDLESS_BYTES >> 16):
                    self.wfile.write(bytes(1 << 16))
        except OSError:  # the client hung up, as it should
            pass

    def log_message(self, *args):
        pass


def flipped(body: bytes) -> bytes:
    damaged = bytearray(body)
    damaged[len(damaged) // 2] ^= 0xFF
    return bytes(damaged)


@pytest.fixture(scope="module")
def http_server(shared_datasets):
    with local_http_server(DamagingHandler, root=shared_datasets, requests=[]) as server:
        yield server


@pytest.fixture
def server(http_server):
    http_server.requests.clear()
    return http_server


@pytest.fixture
def no_sleep(monkeypatch):
    pauses = []
    monkeypatch.setattr(download, "sleep", pauses.append)
    return pauses


def url(server, mode, name="mnist", file_name=SMALL):
    return f"http://127.0.0.1:{server.server_port}/{mode}/{name}/{file_name}"


def small_file(server) -> bytes:
    return (server.root / "mnist" / SMALL).read_bytes()


def test_fetch_verifies_both_checksums_and_leaves_only_the_file(server, tmp_path, capsys):
    body = small_file(server)
    dest = tmp_path / "cache" / SMALL

    result = fetch(url(server, "ok"), dest, sha256=hashlib.sha256(body).hexdigest(),
                   md5=hashlib.md5(body).hexdigest(), timeout=5)

    assert result == dest and dest.read_bytes() == body
    assert [p.name for p in dest.parent.iterdir()] == [SMALL]
    assert server.requests == [f"/ok/mnist/{SMALL}"]
    assert capsys.readouterr().err == ""  # no progress bar when stderr is not a terminal


def content_digest(server) -> str:
    return hashlib.sha256(gzip.decompress(small_file(server))).hexdigest()


def test_fetch_checks_the_uncompressed_content(server, tmp_path):
    dest = tmp_path / SMALL
    fetch(url(server, "ok"), dest, sha256=content_digest(server), sha256_of=content_sha256,
          timeout=5)
    assert dest.read_bytes() == small_file(server)


def test_broken_transfer_is_retried_boundedly_and_leaves_nothing(server, tmp_path, no_sleep):
    body = small_file(server)
    dest = tmp_path / "cache" / SMALL

    with pytest.raises(DataFileError) as info:
        fetch(url(server, "cut"), dest, sha256=hashlib.sha256(body).hexdigest(), retries=2,
              backoff=0.25, timeout=5)

    message = str(info.value)
    assert f"{url(server, 'cut')}: truncated: expected {len(body)} bytes, " \
           f"got {len(body) // 2}" in message
    assert list(dest.parent.iterdir()) == []  # neither the final name nor a temp file
    assert len(server.requests) == 3
    assert no_sleep == [0.25, 0.5]


@pytest.mark.parametrize("mode", ["short", "flip"])
def test_checksum_mismatch_is_not_retried(server, tmp_path, no_sleep, mode):
    """A whole answer with the wrong content: asking again gives the same answer."""
    body = small_file(server)
    expected = hashlib.sha256(body).hexdigest()
    dest = tmp_path / "cache" / SMALL

    with pytest.raises(DataFileError) as info:
        fetch(url(server, mode), dest, sha256=expected, retries=2, backoff=0.25, timeout=5)

    damaged = flipped(body) if mode == "flip" else body[:len(body) // 2]
    assert (f"{url(server, mode)}: sha256 mismatch: expected {expected}, "
            f"got {hashlib.sha256(damaged).hexdigest()}") in str(info.value)
    assert list(dest.parent.iterdir()) == []
    assert len(server.requests) == 1 and no_sleep == []


def test_bad_gzip_from_content_check_drops_the_url(server, tmp_path, no_sleep):
    dest = tmp_path / SMALL
    with pytest.raises(DataFileError, match=r"flip/mnist/t10k-labels-idx1-ubyte.gz: .*"
                                            r"the download: bad gzip") as info:
        fetch(url(server, "flip"), dest, sha256=content_digest(server),
              sha256_of=content_sha256, retries=1, timeout=5)
    assert ".part" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
    assert len(server.requests) == 1


def test_trickling_server_is_stopped_by_the_overall_deadline(server, tmp_path, no_sleep):
    """1 byte every 20 ms never trips the 5 s per-read timeout; the 0.5 s deadline ends it."""
    dest = tmp_path / SMALL
    started = time.monotonic()
    with pytest.raises(DataFileError) as info:
        fetch(url(server, "trickle"), dest, retries=3, timeout=5, deadline=0.5)
    elapsed = time.monotonic() - started

    message = str(info.value)
    assert "within the 0.5 s deadline" in message
    assert f"{url(server, 'trickle')}: the deadline passed after " in message
    # The body takes 4.5 kB * 20 ms = 90 s and the server trickles for 8 s at most:
    # ending before that is only possible through the deadline.
    assert elapsed < TRICKLE_SECONDS / 2
    assert len(server.requests) == 1 and no_sleep == []
    assert list(tmp_path.iterdir()) == []


def test_deadline_cuts_the_pauses_between_rounds(server, tmp_path, no_sleep):
    with pytest.raises(DataFileError, match="within the 0.5 s deadline"):
        fetch(url(server, "trickle"), tmp_path / SMALL, retries=3, backoff=10, timeout=5,
              deadline=0.5)
    assert no_sleep == []  # a 10 s pause would end past the deadline: not taken


@pytest.mark.parametrize("mode, problem", [
    ("huge", f"the server announces {2 << 30} bytes, over the limit of {1 << 20}"),
    ("endless", f"the body grew past the limit of {1 << 20} bytes"),
])
def test_oversized_body_is_refused_and_not_retried(server, tmp_path, no_sleep, mode, problem):
    dest = tmp_path / SMALL
    with pytest.raises(DataFileError) as info:
        fetch(url(server, mode), dest, retries=3, timeout=5, max_bytes=1 << 20)
    assert f"{url(server, mode)}: {problem}" in str(info.value)
    assert len(server.requests) == 1 and no_sleep == []
    assert list(tmp_path.iterdir()) == []


def test_mnist_downloads_use_the_idx_size_limit(server, isolated, monkeypatch):
    """The IDX reader's cap applies to downloads of the dataset too."""
    monkeypatch.setattr(mnist, "MAX_IDX_BYTES", 1 << 20)
    base = f"http://127.0.0.1:{server.server_port}/endless/mnist"
    with pytest.raises(DataFileError, match=f"the body grew past the limit of {1 << 20}"):
        mnist.locate("mnist", download=True, mirrors=[base])
    assert len(server.requests) == 1


def test_mirrors_are_tried_in_turn(server, tmp_path, no_sleep):
    body = small_file(server)
    dest = tmp_path / SMALL
    fetch([url(server, "gone"), url(server, "flip"), url(server, "ok")], dest,
          sha256=hashlib.sha256(body).hexdigest(), timeout=5)
    assert dest.read_bytes() == body
    assert [p.split("/")[1] for p in server.requests] == ["gone", "flip", "ok"]
    assert no_sleep == []


def test_http_404_drops_that_mirror_and_others_are_retried(server, tmp_path, no_sleep):
    with pytest.raises(DataFileError) as info:
        fetch([url(server, "gone"), url(server, "cut")], tmp_path / SMALL,
              sha256=hashlib.sha256(small_file(server)).hexdigest(), retries=3, timeout=5)
    assert f"{url(server, 'gone')}: HTTP 404" in str(info.value)
    assert [p.split("/")[1] for p in server.requests] == ["gone"] + ["cut"] * 4
    assert list(tmp_path.iterdir()) == []


def test_connection_refused(tmp_path, no_sleep):
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = f"http://127.0.0.1:{port}/{SMALL}"
    with pytest.raises(DataFileError, match="connection failed") as info:
        fetch(dead, tmp_path / SMALL, retries=1, timeout=5)
    assert dead in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No data folder but an empty cache under tmp_path."""
    monkeypatch.delenv("GPUBACKPROP_DATA", raising=False)
    monkeypatch.delenv("GPUBACKPROP_MIRROR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(mnist, "DEBIAN_DIR", tmp_path / "debian")
    return tmp_path / "cache" / "gpubackprop"


def test_load_mnist_downloads_into_the_cache_from_the_mirror_variable(server, isolated,
                                                                       monkeypatch):
    monkeypatch.setenv("GPUBACKPROP_MIRROR", f"http://127.0.0.1:{server.server_port}/ok")

    data = load_mnist("mnist", download=True)

    assert data.X_train.shape == (60000, 784) and data.X_test.shape == (10000, 784)
    names = sorted(file_name for file_name, _ in mnist.FILES.values())
    assert sorted(p.name for p in (isolated / "mnist").iterdir()) == names
    assert sorted(server.requests) == sorted(f"/ok/mnist/{name}" for name in names)
    mnist.locate("mnist", download=True)  # found in the cache now
    assert len(server.requests) == 4


def test_failed_download_says_where_to_put_the_files(server, isolated):
    base = f"http://127.0.0.1:{server.server_port}/gone/mnist"
    with pytest.raises(DataFileError) as info:
        load_mnist("mnist", download=True, mirrors=[base])
    message = str(info.value)
    assert f"{base}/train-images-idx3-ubyte.gz: HTTP 404" in message
    assert "Supply the 4 files" in message and str(isolated / "mnist") in message
    for way in ("--data-dir DIR", "GPUBACKPROP_DATA=DIR", "cache folder"):
        assert way in message
    # The cache folders the download created are gone again: no empty folder left behind.
    assert not isolated.parent.exists()
