"""fetch and MNIST download against a real HTTP server on 127.0.0.1.

The server serves the shared IDX folder under a prefix that says how to damage
the reply: /ok/ as is, /cut/ half the body under the full Content-Length,
/short/ half the body with an honest Content-Length, /flip/ one byte inverted,
/gone/ 404.
"""

import gzip
import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gpubackprop.data import download, mnist
from gpubackprop.data.datasets import load_mnist
from gpubackprop.data.download import fetch
from gpubackprop.errors import DataFileError
from gpubackprop.data.idx import content_sha256

SMALL = "t10k-labels-idx1-ubyte.gz"  # 4.5 kB


class DamagingHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        mode, _, rest = self.path.lstrip("/").partition("/")
        path = self.server.root / rest
        if mode == "gone" or not path.is_file():
            self.send_error(404)
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

    def log_message(self, *args):
        pass


def flipped(body: bytes) -> bytes:
    damaged = bytearray(body)
    damaged[len(damaged) // 2] ^= 0xFF
    return bytes(damaged)


@pytest.fixture(scope="module")
def http_server(shared_datasets):
    server = ThreadingHTTPServer(("127.0.0.1", 0), DamagingHandler)
    server.root, server.requests = shared_datasets, []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


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


@pytest.mark.parametrize("mode", ["cut", "short", "flip"])
def test_damaged_download_is_retried_boundedly_and_leaves_nothing(server, tmp_path, no_sleep,
                                                                  mode):
    body = small_file(server)
    expected = hashlib.sha256(body).hexdigest()
    dest = tmp_path / "cache" / SMALL

    with pytest.raises(DataFileError) as info:
        fetch(url(server, mode), dest, sha256=expected, retries=2, backoff=0.25, timeout=5)

    message = str(info.value)
    assert url(server, mode) in message
    if mode == "cut":
        assert f"truncated: expected {len(body)} bytes, got {len(body) // 2}" in message
    else:
        damaged = flipped(body) if mode == "flip" else body[:len(body) // 2]
        assert (f"sha256 mismatch: expected {expected}, "
                f"got {hashlib.sha256(damaged).hexdigest()}") in message
    assert list(dest.parent.iterdir()) == []  # neither the final name nor a temp file
    assert len(server.requests) == 3
    assert no_sleep == [0.25, 0.5]


def test_bad_gzip_from_content_check_is_a_failed_attempt(server, tmp_path, no_sleep):
    dest = tmp_path / SMALL
    with pytest.raises(DataFileError, match=r"flip/mnist/t10k-labels-idx1-ubyte.gz: .*"
                                            r"the download: bad gzip") as info:
        fetch(url(server, "flip"), dest, sha256=content_digest(server),
              sha256_of=content_sha256, retries=1, timeout=5)
    assert ".part" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
    assert len(server.requests) == 2


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
        fetch([url(server, "gone"), url(server, "flip")], tmp_path / SMALL,
              sha256=hashlib.sha256(small_file(server)).hexdigest(), retries=3, timeout=5)
    assert f"{url(server, 'gone')}: HTTP 404" in str(info.value)
    assert [p.split("/")[1] for p in server.requests] == ["gone"] + ["flip"] * 4
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
