import json
import os
import struct

import ml_dtypes
import numpy as np

DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16),
          "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
          "U8": np.dtype("u1"), "BOOL": np.dtype("?")}
NAMES = {dt: n for n, dt in DTYPES.items()}


def _write(tensors, metadata=None, base=0, name=lambda dt: NAMES[dt], data=lambda x: np.ascontiguousarray(x).tobytes(),
           with_meta=True):
    arrays = {n: np.asarray(x) for n, x in tensors.items()}
    for n, x in arrays.items():
        if x.dtype not in NAMES:
            raise ValueError(f"{n}: unsupported dtype {x.dtype}")
    order = sorted(arrays, key=lambda n: (-arrays[n].dtype.itemsize, n))
    h, off = ({"__metadata__": metadata} if metadata and with_meta else {}), 0
    for n in order:
        h[n] = {"dtype": name(arrays[n].dtype), "shape": list(arrays[n].shape),
                "data_offsets": [base + off, base + off + arrays[n].nbytes]}
        off += arrays[n].nbytes
    raw = json.dumps(h).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    return np.frombuffer(struct.pack("<Q", len(raw)) + raw + b"".join(data(arrays[n]) for n in order), np.uint8)


def safetensors_bytes__numpy_dtype_names(tensors, metadata=None):
    """the library's reader refuses your bytes"""
    return _write(tensors, metadata, name=lambda dt: str(dt))


def safetensors_bytes__offsets_past_header(tensors, metadata=None):
    """the library's reader refuses your bytes"""
    return _write(tensors, metadata, base=8)


def safetensors_bytes__forgets_metadata(tensors, metadata=None):
    """the metadata reads back as"""
    return _write(tensors, metadata, with_meta=False)


def safetensors_bytes__memory_order(tensors, metadata=None):
    """holds other values than the array given"""
    return _write(tensors, metadata, data=lambda x: x.tobytes(order="A"))


def _read(data, bf16_as=None, check=True, message="bad file", meta_key=True):
    data = bytes(data)
    if check:
        if len(data) < 8:
            raise ValueError(message)
        (n,) = struct.unpack_from("<Q", data)
        if 8 + n > len(data):
            raise ValueError(message)
        try:
            h = json.loads(data[8:8 + n])
        except ValueError:
            raise ValueError(message) from None
        if not isinstance(h, dict):
            raise ValueError(message)
    else:
        (n,) = struct.unpack_from("<Q", data)
        h = json.loads(data[8:8 + n])
    meta = h.pop("__metadata__", {}) if meta_key else {}
    out = {}
    for name, info in h.items():
        if name == "__metadata__":
            out[name] = np.zeros(0)
            continue
        if check and info["dtype"] not in DTYPES:
            raise ValueError(message)
        dt = DTYPES[info["dtype"]]
        b, e = info["data_offsets"]
        count = int(np.prod(info["shape"]))
        if check and (e - b != count * dt.itemsize or 8 + n + e > len(data)):
            raise ValueError(message)
        x = np.frombuffer(data[8 + n + b:8 + n + e], dt).reshape(info["shape"]).copy()
        out[name] = x.view(np.uint16) if (bf16_as and info["dtype"] == "BF16") else x
    return out, meta


def load_safetensors__bf16_as_uint16(data):
    """came back as uint16"""
    return _read(data, bf16_as=True)


def load_safetensors__metadata_as_tensor(data):
    """__metadata__ is not a tensor"""
    return _read(data, meta_key=False)


def load_safetensors__error_without_message(data):
    """without a message"""
    return _read(data, message="")


def load_safetensors__lets_errors_through(data):
    """expected ValueError"""
    return _read(data, check=False)


def save_safetensors__type_error(tensors, path, metadata=None):
    """must raise ValueError"""
    for x in tensors.values():
        if np.asarray(x).dtype not in NAMES:
            raise TypeError("unsupported dtype")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(_write(tensors, metadata).tobytes())
    os.replace(tmp, path)


def save_safetensors__skips_bad_tensors(tensors, path, metadata=None):
    """must raise ValueError"""
    ok = {n: x for n, x in tensors.items() if np.asarray(x).dtype in NAMES}
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(_write(ok, metadata).tobytes())
    os.replace(tmp, path)


def save_safetensors__returns_the_path(tensors, path, metadata=None):
    """None"""
    with open(path, "wb") as f:
        f.write(_write(tensors, metadata).tobytes())
    return [path]


def load_safetensors(data):
    """A right reader: the end-to-end test of save_safetensors reads the saved file back with it."""
    if isinstance(data, str):
        with open(data, "rb") as f:
            data = f.read()
    try:
        return _read(data)
    except (KeyError, TypeError, struct.error) as e:
        raise ValueError(str(e)) from None
