"""The IDX reader: round trip, and one clear DataFileError per kind of damage."""

import gzip
import hashlib
import tracemalloc

import numpy as np
import pytest

from gpubackprop.errors import DataFileError
from gpubackprop.data.idx import (DTYPES, MAX_IDX_BYTES, content_sha256, parse_idx,
                                  read_content, read_idx)

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


# ---------------------------------------------------------------- hostile files
def gzip_bomb(path, header: bytes, zeros: int) -> int:
    """Write ``header`` then ``zeros`` zero bytes, gzipped in pieces; return the file size.

    Made here in bounded time and memory: 1 MiB of zeros at a time.
    """
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(header)
        piece = bytes(1 << 20)
        for _ in range(zeros >> 20):
            out.write(piece)
        out.write(bytes(zeros & ((1 << 20) - 1)))
    return path.stat().st_size


def idx_header(type_code: int, shape) -> bytes:
    return bytes([0, 0, type_code, len(shape)]) + b"".join(
        int(n).to_bytes(4, "big") for n in shape)


def test_gzip_bomb_is_stopped_at_the_declared_size_without_expanding(tmp_path):
    """A 10x10 header followed by 200 MB of zeros (about 200 kB gzipped)."""
    path = tmp_path / "bomb.idx.gz"
    size = gzip_bomb(path, idx_header(0x08, (10, 10)), 200 << 20)
    assert size < 1 << 20

    tracemalloc.start()
    try:
        with pytest.raises(DataFileError, match=r"bomb.idx.gz: more than \d+ trailing bytes "
                                                r"after the 112 bytes that the header"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # 200 MB decompressed would show here


@pytest.mark.parametrize("reader", [read_content, content_sha256])
def test_whole_content_readers_stop_at_the_cap(tmp_path, reader):
    path = tmp_path / "bomb.gz"
    gzip_bomb(path, idx_header(0x08, (10, 10)), 64 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(DataFileError, match=r"bomb.gz: the content is larger than the "
                                                r"16777216-byte limit"):
            reader(path, max_bytes=16 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 << 20  # read_content holds at most the cap; content_sha256 a chunk


def test_declared_size_over_the_cap_is_refused_before_decompressing(tmp_path):
    """The header asks for 60000 x 28 x 28 float64 (376 MB): over MAX_IDX_BYTES."""
    path = tmp_path / "big.idx.gz"
    gzip_bomb(path, idx_header(0x0E, (60000, 28, 28)), 1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(DataFileError, match=r"big.idx.gz: the header declares a float64 "
                                                r"array of shape \(60000, 28, 28\), "
                                                r"376320016 bytes, over the 268435456-byte"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert MAX_IDX_BYTES == 256 << 20
    assert peak < 1 << 20


def test_read_idx_accepts_a_larger_cap_when_asked(tmp_path, images):
    data = idx_bytes(images)
    path = write(tmp_path, data)
    with pytest.raises(DataFileError, match="over the 70-byte limit"):
        read_idx(path, max_bytes=70)
    np.testing.assert_array_equal(read_idx(path, max_bytes=len(data)), images)


@pytest.mark.parametrize("shape, problem", [
    ((0xFFFFFFFF,) * 4, r"declares a uint8 array of shape \(4294967295, 4294967295, "
                        r"4294967295, 4294967295\), \d+ bytes, over"),  # product overflows int64
    ((1 << 16, 1 << 16, 1 << 16), r"over the 268435456-byte limit"),  # 2**48 overflows int32
    ((2, 0, 3), r"dimension 1 of shape \(2, 0, 3\) is 0"),
    ((0,), r"dimension 0 of shape \(0,\) is 0"),
])
@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_hostile_dimensions(tmp_path, shape, problem, compress):
    data = idx_header(0x08, shape) + bytes(16)
    path = write(tmp_path, gzip.compress(data) if compress else data, "dims.idx")
    with pytest.raises(DataFileError, match=problem) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_parse_idx_applies_the_same_checks(images):
    with pytest.raises(DataFileError, match=r"mem: dimension 0 of shape \(0, 3\) is 0"):
        parse_idx(idx_header(0x08, (0, 3)), "mem")
    with pytest.raises(DataFileError, match="mem: the header declares"):
        parse_idx(idx_header(0x08, (0xFFFFFFFF,) * 3), "mem")
    np.testing.assert_array_equal(parse_idx(idx_bytes(images)), images)


@pytest.mark.parametrize("cut", [1, 10, 57])
def test_truncated_gzip_content_names_both_byte_counts(tmp_path, images, cut):
    """A complete gzip stream whose content stops short of what the header declares."""
    data = idx_bytes(images)
    path = write(tmp_path, gzip.compress(data[:-cut]), "short.idx.gz")
    with pytest.raises(DataFileError, match=fr"short.idx.gz: truncated: expected 76 bytes "
                                            fr".*got {76 - cut}"):
        read_idx(path)


def test_gzip_trailing_garbage_is_counted(tmp_path, images):
    path = write(tmp_path, gzip.compress(idx_bytes(images) + b"junk!"), "tail.idx.gz")
    with pytest.raises(DataFileError, match=r"tail.idx.gz: 5 trailing bytes after the 76"):
        read_idx(path)


@pytest.mark.parametrize("magic, problem", [
    (b"\x1f\x8b\x08\x00", "bad gzip"),           # a gzip magic, then nothing valid
    (b"PK\x03\x04", "bad magic number 50 4b 03 04"),  # a zip file
    (b"\x00\x00\x0e", "truncated: expected at least 4 bytes"),
    (b"", "truncated: expected at least 4 bytes of IDX header, got 0"),
])
def test_not_an_idx_file(tmp_path, magic, problem):
    path = write(tmp_path, magic, "odd.idx")
    with pytest.raises(DataFileError, match=problem) as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("type_code", [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E])
def test_every_type_code_reads_in_native_order(tmp_path, type_code):
    dtype = DTYPES[type_code]
    array = np.arange(-3, 9).reshape(3, 4).astype(dtype.newbyteorder("="))
    data = idx_header(type_code, array.shape) + array.astype(dtype).tobytes()
    path = write(tmp_path, gzip.compress(data), "typed.idx.gz")
    result = read_idx(path, sha256=hashlib.sha256(data).hexdigest())
    assert result.dtype.isnative and result.dtype == dtype.newbyteorder("=")
    np.testing.assert_array_equal(result, array)
