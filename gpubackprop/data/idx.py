"""Reading IDX files (the format of MNIST and Fashion-MNIST), gzipped or raw.

An IDX file is a 4-byte magic number ``0x00 0x00 <type code> <ndim>``, then
``ndim`` big-endian uint32 dimensions, then the array in C order, big-endian.
Every problem with a file is raised as :class:`~gpubackprop.errors.DataFileError`
naming the file and what is wrong with it.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import stat
import zlib

import numpy as np

from ..errors import DataFileError

#: IDX type code -> big-endian NumPy dtype.
DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_MAGIC = b"\x00\x00"

#: The most uncompressed bytes one IDX file may hold: 256 MiB, over five times
#: the largest file this library reads (MNIST's training images, 47,040,016 bytes).
#: A header declaring more is refused before anything is decompressed, and a
#: stream is never decompressed past the size its header declares.
MAX_IDX_BYTES = 256 << 20

#: Bytes decompressed at a time when hashing or counting a stream.
_CHUNK = 1 << 16
#: Bytes decompressed at a time into an array.
_SLICE = 1 << 20


class _Content:
    """The uncompressed content of an IDX file, read in bounded pieces.

    Gzip is recognised by its own magic bytes, not by the file name; a file
    named ``.gz`` that is not gzip (nor IDX) is refused.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = path
        try:
            self.file = open(path, "rb")
        except OSError as exc:
            raise DataFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
        status = os.fstat(self.file.fileno())
        self.size, self.regular = status.st_size, stat.S_ISREG(status.st_mode)
        start = self.file.read(2)
        self.file.seek(0)
        self.gzipped = start == _GZIP_MAGIC
        if not self.gzipped and str(path).endswith(".gz") and start != _IDX_MAGIC:
            self.file.close()
            raise DataFileError(f"{path}: bad gzip: not a gzip file "
                                f"(it starts with bytes {start.hex(' ') or 'none, empty'})")
        self.stream = gzip.GzipFile(fileobj=self.file, mode="rb") if self.gzipped else self.file

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()
        self.file.close()
        return False

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes of content (fewer only at its end)."""
        with self._errors():
            return self.stream.read(n)

    def readinto(self, buffer) -> int:
        """Fill ``buffer`` from the content; the number of bytes it got."""
        view, filled = memoryview(buffer).cast("B"), 0
        with self._errors():
            while filled < len(view):
                # In slices: gzip's readinto decompresses into a temporary of the slice's size.
                got = self.stream.readinto(view[filled:filled + _SLICE])
                if not got:
                    break
                filled += got
        return filled

    def remaining(self, position: int, limit: int) -> tuple[int, bool]:
        """(bytes left after ``position``, counted up to ``limit``; whether that is all)."""
        if self.regular and not self.gzipped:
            return self.size - position, True
        extra = len(self.read(limit + 1))
        return min(extra, limit), extra <= limit

    def _errors(self):
        return _ReadErrors(self.path, self.size, self.gzipped)


class _ReadErrors:
    """Turns a damaged gzip stream's (or a failing read's) exceptions into a DataFileError."""

    def __init__(self, path, size: int, gzipped: bool):
        self.path, self.size, self.gzipped = path, size, gzipped

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, traceback):
        if kind is EOFError:
            raise DataFileError(f"{self.path}: bad gzip: the compressed stream ends early "
                                f"(truncated file, {self.size} bytes)") from None
        if kind is not None and issubclass(kind, (OSError, zlib.error)) and \
                not isinstance(exc, DataFileError):
            problem = "bad gzip" if self.gzipped else "cannot read"
            raise DataFileError(f"{self.path}: {problem}: {exc}") from None
        return False


def read_content(path: str | os.PathLike, max_bytes: int = MAX_IDX_BYTES) -> bytes:
    """Return the uncompressed bytes of ``path``, gunzipping it if it is gzip.

    Raises :class:`DataFileError` instead of decompressing past ``max_bytes``.
    """
    return b"".join(_content_chunks(path, max_bytes))


def content_sha256(path: str | os.PathLike, max_bytes: int = MAX_IDX_BYTES) -> str:
    """Hex sha256 of the uncompressed content of ``path``, read in pieces.

    Checksums of the content do not depend on how a file was gzipped. Raises
    :class:`DataFileError` instead of decompressing past ``max_bytes``.
    """
    digest = hashlib.sha256()
    for chunk in _content_chunks(path, max_bytes):
        digest.update(chunk)
    return digest.hexdigest()


def _content_chunks(path, max_bytes: int):
    """The uncompressed content of ``path`` in pieces, stopping at ``max_bytes``."""
    total = 0
    with _Content(path) as content:
        while chunk := content.read(_CHUNK):
            total += len(chunk)
            if total > max_bytes:
                raise DataFileError(f"{path}: the content is larger than the {max_bytes}-byte "
                                    f"limit; refusing to decompress it further")
            yield chunk


def parse_header(header: bytes, source: str | os.PathLike = "<bytes>",
                 max_bytes: int = MAX_IDX_BYTES, read_more=None):
    """Decode and check an IDX header: (dtype, shape, the header's bytes).

    Parameters
    ----------
    header : bytes
        The file's first bytes: at least the 4 magic bytes.
    read_more : callable(n) -> bytes, optional
        Gives the next ``n`` bytes when ``header`` holds only the magic number.
    max_bytes : int
        The most bytes the whole file may declare.

    Raises
    ------
    DataFileError
        Wrong magic, unknown type code, no dimensions, a zero dimension, a
        declared size past ``max_bytes``, or a truncated header.
    """
    if len(header) < 4:
        raise DataFileError(f"{source}: truncated: expected at least 4 bytes of IDX "
                            f"header, got {len(header)}")
    if header[:2] != _IDX_MAGIC:
        raise DataFileError(f"{source}: bad magic number {header[:4].hex(' ')}: an IDX file "
                            f"starts with 00 00 <type code> <number of dimensions>")
    type_code, ndim = header[2], header[3]
    if type_code not in DTYPES:
        known = ", ".join(f"0x{code:02X}" for code in DTYPES)
        raise DataFileError(f"{source}: bad magic number {header[:4].hex(' ')}: unknown data "
                            f"type code 0x{type_code:02X} (known: {known})")
    if ndim == 0:
        raise DataFileError(f"{source}: bad magic number {header[:4].hex(' ')}: 0 dimensions")
    length = 4 + 4 * ndim
    if len(header) < length and read_more is not None:
        header = header[:4] + read_more(length - 4)
    if len(header) < length:
        raise DataFileError(f"{source}: truncated: expected {length} bytes of IDX header "
                            f"for {ndim} dimensions, got {len(header)}")
    shape = tuple(int.from_bytes(header[i:i + 4], "big") for i in range(4, length, 4))
    if 0 in shape:
        raise DataFileError(f"{source}: dimension {shape.index(0)} of shape {shape} is 0; "
                            f"an IDX file holds at least one element")
    dtype = DTYPES[type_code]
    declared = length + math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if declared > max_bytes:
        raise DataFileError(f"{source}: the header declares a {dtype.name} array of shape "
                            f"{shape}, {declared} bytes, over the {max_bytes}-byte limit "
                            f"(MAX_IDX_BYTES)")
    return dtype, shape, header[:length]


def parse_idx(data: bytes, source: str | os.PathLike = "<bytes>",
              max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Decode the IDX bytes ``data`` without copying them.

    Parameters
    ----------
    data : bytes
        One whole uncompressed IDX file.
    source : str or path
        The file name used in error messages.

    Returns
    -------
    ndarray, shape given by the header
        In native byte order: a read-only view of ``data`` for 1-byte types,
        a copy otherwise.
    """
    dtype, shape, header = parse_header(data[:4 + 4 * 255], source, max_bytes)
    expected = len(header) + math.prod(shape) * dtype.itemsize
    if len(data) < expected:
        raise DataFileError(f"{source}: truncated: expected {expected} bytes for a "
                            f"{dtype.name} array of shape {shape}, got {len(data)}")
    if len(data) > expected:
        raise DataFileError(f"{source}: {len(data) - expected} trailing bytes after the "
                            f"{expected} bytes that the header describes (shape {shape})")
    array = np.frombuffer(data, dtype, offset=len(header)).reshape(shape)
    return array if dtype.itemsize == 1 else array.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike, shape: tuple | None = None,
             sha256: str | None = None, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file, gzipped or raw, checking its structure and optionally more.

    The content is streamed into the array: nothing is decompressed past the
    size the header declares (plus a few bytes to detect trailing data), and
    a header declaring more than ``max_bytes`` is refused before any of it.

    Parameters
    ----------
    path : str or path
    shape : tuple of int, optional
        The shape the array must have; checked before the checksum, so a wrong
        file is reported by what it holds.
    sha256 : str, optional
        Hex sha256 the uncompressed content must have.
    max_bytes : int
        The most uncompressed bytes the file may declare (default
        :data:`MAX_IDX_BYTES`).

    Returns
    -------
    ndarray, shape from the file's header, native byte order

    Raises
    ------
    DataFileError
        Unreadable file, bad gzip, bad magic number, zero or oversized
        dimensions, truncated or trailing data, wrong shape or checksum.
    """
    with _Content(path) as content:
        dtype, file_shape, header = parse_header(content.read(4), path, max_bytes,
                                                 content.read)
        # Allocated at the declared size (checked against max_bytes), then filled in place.
        array = np.empty(file_shape, dtype)
        got = content.readinto(array)
        expected = len(header) + array.nbytes
        if got < array.nbytes:
            raise DataFileError(f"{path}: truncated: expected {expected} bytes for a "
                                f"{dtype.name} array of shape {file_shape}, "
                                f"got {len(header) + got}")
        extra, exact = content.remaining(expected, _CHUNK)
        if extra:
            count = f"{extra}" if exact else f"more than {extra}"
            raise DataFileError(f"{path}: {count} trailing bytes after the {expected} bytes "
                                f"that the header describes (shape {file_shape})")
    if shape is not None and array.shape != tuple(shape):
        raise DataFileError(f"{path}: expected an array of shape {tuple(shape)}, "
                            f"the file holds shape {array.shape}")
    if sha256 is not None:
        digest = hashlib.sha256(header)
        digest.update(array.data)
        actual = digest.hexdigest()
        if actual != sha256.lower():
            raise DataFileError(f"{path}: sha256 of the uncompressed content is {actual}, "
                                f"expected {sha256.lower()}; the file is corrupted or "
                                f"not the one expected")
    if dtype.itemsize > 1:
        array = array.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return array
