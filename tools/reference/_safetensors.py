"""The one safetensors reader/writer of the reference scripts (written by hand: no safetensors package in Debian).

A file is an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__"}
(padded with spaces to a multiple of 8 bytes, as the reference writer does), then the tensors' little-endian bytes in
header order, contiguous. bfloat16 tensors travel as uint16 arrays of their bits (numpy has no bfloat16).
"""
import json
import struct

import numpy as np

DTYPES = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("float64"): "F64",
          np.dtype("int64"): "I64", np.dtype("uint16"): "BF16"}


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, np.ndarray); returns the size of the data section."""
    header, blobs, offset = {}, [], 0
    for name, arr in tensors:
        arr = np.ascontiguousarray(arr)
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": DTYPES[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    return offset


def read_safetensors(path):
    """{name: np.ndarray}; BF16 tensors come back as float32."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    names = {v: k for k, v in DTYPES.items()}
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        a = np.frombuffer(data[b:e], dtype=names[v["dtype"]]).reshape(v["shape"])
        if v["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[k] = a
    return out
