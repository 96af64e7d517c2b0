"""The IDX reader: round trip, and one clear DataFileError per kind of damage."""

import gzip
import hashlib

import numpy as np
import pytest

from gpubackprop.errors import DataFileError
from gpubackprop.data.idx import content_sha256, read_content, read_idx

TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B,
              np.dtype(np.float32): 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` as IDX, written independently of the reader."""
    header = bytes([0, 0, TYPE_CODES[array.dtype], array.ndim])
    dims = b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + dims + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(5, 3, 4), dtype=np.uint8)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_round_trip(tmp_path, compress, dtype):
    array = (np.arange(24).reshape(2, 3, 4) * 10.5).astype(dtype)  # int16 spans 2 bytes
    data = idx_bytes(array)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    path.write_bytes(gzip.compress(data) if compress else data)

    result = read_idx(path, shape=(2, 3, 4), sha256=hashlib.sha256(data).hexdigest())

    assert result.dtype == np.dtype(dtype) and result.dtype.isnative
    np.testing.assert_array_equal(result, array)
    assert content_sha256(path) == hashlib.sha256(data).hexdigest()


def test_sha256_is_of_the_content_not_the_compression(tmp_path, images):
    data = idx_bytes(images)
    fast, small = tmp_path / "fast.gz", tmp_path / "small.gz"
    fast.write_bytes(gzip.compress(data, compresslevel=1, mtime=0))
    small.write_bytes(gzip.compress(data, compresslevel=9, mtime=1))
    assert fast.read_bytes() != small.read_bytes()
    assert content_sha256(fast) == content_sha256(small) == hashlib.sha256(data).hexdigest()


def write(tmp_path, data: bytes, name="bad.idx"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_truncated_data_names_both_byte_counts(tmp_path, images):
    data = idx_bytes(images)  # 4 + 12 + 60 = 76 bytes
    path = write(tmp_path, data[:-10])
    with pytest.raises(DataFileError, match=r"truncated: expected 76 bytes .*got 66") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_header(tmp_path, images):
    path = write(tmp_path, idx_bytes(images)[:9])
    with pytest.raises(DataFileError, match=r"bad.idx: truncated: expected 16 bytes of IDX "
                                            r"header for 3 dimensions, got 9"):
        read_idx(path)


@pytest.mark.parametrize("magic, problem", [
    (b"\x01\x00\x08\x03", "bad magic number 01 00 08 03"),
    (b"\x00\x00\x42\x03", "unknown data type code 0x42"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
])
def test_bad_magic(tmp_path, images, magic, problem):
    path = write(tmp_path, magic + idx_bytes(images)[4:])
    with pytest.raises(DataFileError, match=problem) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_trailing_bytes(tmp_path, images):
    path = write(tmp_path, idx_bytes(images) + b"\x00" * 3)
    with pytest.raises(DataFileError, match=r"bad.idx: 3 trailing bytes after the 76 bytes"):
        read_idx(path)


def test_corrupted_gzip(tmp_path, images):
    packed = bytearray(gzip.compress(idx_bytes(images)))
    packed[len(packed) // 2] ^= 0xFF
    path = write(tmp_path, bytes(packed), "bad.idx.gz")
    with pytest.raises(DataFileError, match=r"bad.idx.gz: bad gzip: "):
        read_idx(path)


def test_truncated_gzip(tmp_path, images):
    packed = gzip.compress(idx_bytes(images))
    path = write(tmp_path, packed[:len(packed) - 12], "bad.idx.gz")
    with pytest.raises(DataFileError, match=r"bad.idx.gz: bad gzip: the compressed stream "
                                            r"ends early"):
        read_idx(path)


def test_gz_name_without_gzip_content(tmp_path):
    path = write(tmp_path, b"<html>404</html>", "page.gz")
    with pytest.raises(DataFileError, match=r"page.gz: bad gzip: not a gzip file "
                                            r"\(it starts with bytes 3c 68\)"):
        read_content(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataFileError, match=r"nothing.idx: cannot read: No such file"):
        read_idx(tmp_path / "nothing.idx")


def test_wrong_shape_is_reported_before_the_checksum(tmp_path, images):
    path = write(tmp_path, idx_bytes(images))
    with pytest.raises(DataFileError, match=r"expected an array of shape \(60000, 28, 28\), "
                                            r"the file holds shape \(5, 3, 4\)"):
        read_idx(path, shape=(60000, 28, 28), sha256="0" * 64)


def test_checksum_mismatch_names_expected_and_actual(tmp_path, images):
    data = idx_bytes(images)
    path = write(tmp_path, data)
    with pytest.raises(DataFileError) as info:
        read_idx(path, sha256="AB" * 32)
    message = str(info.value)
    assert str(path) in message
    assert "ab" * 32 in message and hashlib.sha256(data).hexdigest() in message
