# Copyright (c) the bundle authors. Licensed under the Apache License, Version 2.0.
"""Whether an image file is whole, read from its header and its bytes: a NIfTI shorter than its header
says, a ``.nii.gz`` cut off before its gzip trailer or corrupt inside. The checks of
:mod:`scripts.data.case_validation` that need no voxel read."""

from __future__ import annotations

import os
import zlib
from typing import Any

import nibabel as nib
import numpy as np

__all__ = ["NIBABEL_EXTENSIONS", "check_compressed_size", "check_file_size", "describe_error", "is_nibabel_file"]

#: file name endings opened with nibabel; files with other endings are not checked.
NIBABEL_EXTENSIONS = (".nii", ".nii.gz", ".mgh", ".mgz", ".hdr", ".img")
# bytes read and decompressed at a time: memory stays small whatever the file
_GZIP_CHUNK = 1 << 20


def describe_error(e: BaseException, path: str | None = None) -> str:
    """One-line ``Type: message`` of an exception; ``path`` (named at the end of every message) shortened."""
    text = " ".join(str(e).split())
    if path:
        text = text.replace(path, os.path.basename(path))
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def is_nibabel_file(path: str) -> bool:
    return path.lower().endswith(NIBABEL_EXTENSIONS)


def check_compressed_size(path: str, expected: int | None = None) -> str | None:
    """
    None when the gzip file ``path`` is a complete gzip stream that decompresses to at least
    ``expected`` bytes. With ``expected``, the trailer's ISIZE (size mod 2**32) is compared first,
    and only a mismatch (a truncated or multi-member file) costs a streaming decompression, in
    chunks of bounded size (memory stays small whatever the file).
    """
    with open(path, "rb") as f:
        if expected:
            f.seek(0, os.SEEK_END)
            if f.tell() >= 18:
                f.seek(-4, os.SEEK_END)
                if int.from_bytes(f.read(4), "little") == expected % (1 << 32):
                    return None
            f.seek(0)
        total = 0
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            done = False
            while not done:
                data = f.read(_GZIP_CHUNK)
                if not data:
                    break
                while data:
                    if decompressor.eof:
                        if not data.startswith(b"\x1f\x8b"):  # padding after the last member: ignored
                            done = True
                            break
                        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)  # next gzip member
                    total += len(decompressor.decompress(data, _GZIP_CHUNK))
                    data = decompressor.unused_data if decompressor.eof else decompressor.unconsumed_tail
        except zlib.error as e:
            return f"corrupt compressed data after {total} uncompressed bytes ({describe_error(e)})"
    needs = f", the header needs {expected}" if expected else ""
    if not decompressor.eof and expected and total >= expected:
        return (
            f"incomplete gzip file: the voxel data is complete ({total} bytes) but the gzip trailer (checksum and "
            "size) is cut off; the file was truncated while being written or copied: write or copy it again"
        )
    if not decompressor.eof:
        return f"truncated compressed stream: it ends after {total} uncompressed bytes{needs}"
    if expected and total < expected:
        return f"truncated file: decompresses to {total} bytes{needs}"
    return None


def check_file_size(img: Any, path: str) -> str | None:
    """Header-only truncation check of a single-file NIfTI; None when the size is plausible."""
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        return None
    lower = path.lower()
    if not lower.endswith((".nii", ".nii.gz")):
        return None
    offset = int(getattr(img.dataobj, "offset", img.header.get_data_offset()))
    expected = offset + int(np.prod(img.shape, dtype=np.int64)) * img.header.get_data_dtype().itemsize
    if lower.endswith(".nii"):
        size = os.path.getsize(path)
        if size < expected:
            return f"truncated file: {size} bytes, the header needs {expected}"
        return None
    return check_compressed_size(path, expected)
