"""Reading IDX files (the format of MNIST and Fashion-MNIST), gzipped or raw.

An IDX file is a 4-byte magic number ``0x00 0x00 <type code> <ndim>``, then
``ndim`` big-endian uint32 dimensions, then the array in C order, big-endian.
Every problem with a file is raised as :class:`~gpubackprop.errors.DataFileError`
naming the file and what is wrong with it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
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


def read_content(path: str | os.PathLike) -> bytes:
    """Return the uncompressed bytes of ``path``, gunzipping it if it is gzip.

    Gzip is recognised by its own magic bytes, not by the file name.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if data[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(data)
        except EOFError:
            raise DataFileError(f"{path}: bad gzip: the compressed stream ends early "
                                f"(truncated file, {len(data)} bytes)") from None
        except (OSError, zlib.error) as exc:
            raise DataFileError(f"{path}: bad gzip: {exc}") from None
    if str(path).endswith(".gz") and data[:2] != b"\x00\x00":
        raise DataFileError(f"{path}: bad gzip: not a gzip file "
                            f"(it starts with bytes {data[:2].hex(' ') or 'none, empty'})")
    return data


def content_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of the uncompressed content of ``path`` (see :func:`read_content`).

    Checksums of the content do not depend on how a file was gzipped.
    """
    return hashlib.sha256(read_content(path)).hexdigest()


def parse_idx(data: bytes, source: str | os.PathLike = "<bytes>") -> np.ndarray:
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
    if len(data) < 4:
        raise DataFileError(f"{source}: truncated: expected at least 4 bytes of IDX "
                            f"header, got {len(data)}")
    if data[:2] != b"\x00\x00":
        raise DataFileError(f"{source}: bad magic number {data[:4].hex(' ')}: an IDX file "
                            f"starts with 00 00 <type code> <number of dimensions>")
    type_code, ndim = data[2], data[3]
    if type_code not in DTYPES:
        known = ", ".join(f"0x{code:02X}" for code in DTYPES)
        raise DataFileError(f"{source}: bad magic number {data[:4].hex(' ')}: unknown data "
                            f"type code 0x{type_code:02X} (known: {known})")
    if ndim == 0:
        raise DataFileError(f"{source}: bad magic number {data[:4].hex(' ')}: 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFileError(f"{source}: truncated: expected {header} bytes of IDX header "
                            f"for {ndim} dimensions, got {len(data)}")
    shape = tuple(int(n) for n in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = DTYPES[type_code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) < expected:
        raise DataFileError(f"{source}: truncated: expected {expected} bytes for a "
                            f"{dtype.name} array of shape {shape}, got {len(data)}")
    if len(data) > expected:
        raise DataFileError(f"{source}: {len(data) - expected} trailing bytes after the "
                            f"{expected} bytes that the header describes (shape {shape})")
    array = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return array if dtype.itemsize == 1 else array.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike, shape: tuple | None = None,
             sha256: str | None = None) -> np.ndarray:
    """Read an IDX file, gzipped or raw, checking its structure and optionally more.

    Parameters
    ----------
    path : str or path
    shape : tuple of int, optional
        The shape the array must have; checked before the checksum, so a wrong
        file is reported by what it holds.
    sha256 : str, optional
        Hex sha256 the uncompressed content must have.

    Returns
    -------
    ndarray, shape from the file's header

    Raises
    ------
    DataFileError
        Unreadable file, bad gzip, bad magic number, truncated or trailing
        data, wrong shape or checksum.
    """
    data = read_content(path)
    array = parse_idx(data, path)
    if shape is not None and array.shape != tuple(shape):
        raise DataFileError(f"{path}: expected an array of shape {tuple(shape)}, "
                            f"the file holds shape {array.shape}")
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256.lower():
            raise DataFileError(f"{path}: sha256 of the uncompressed content is {actual}, "
                                f"expected {sha256.lower()}; the file is corrupted or "
                                f"not the one expected")
    return array
