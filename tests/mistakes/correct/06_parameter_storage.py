import json
import os
import struct
import tempfile

import ml_dtypes
import numpy as np

_CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
          "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def safetensors_bytes__bytearray(tensors, metadata=None):
    items = sorted(tensors.items(), key=lambda kv: (-np.asarray(kv[1]).dtype.itemsize, kv[0]))
    header, blobs, pos = {}, bytearray(), 0
    if metadata:
        header["__metadata__"] = metadata
    for name, x in items:
        x = np.asarray(x)
        if x.dtype.name not in _CODES:
            raise ValueError(f"cannot store {x.dtype}")
        b = x.tobytes(order="C")
        header[name] = {"dtype": _CODES[x.dtype.name], "shape": list(x.shape), "data_offsets": [pos, pos + len(b)]}
        blobs += b
        pos += len(b)
    text = json.dumps(header, separators=(",", ":")).encode()
    while (len(text) + 8) % 8:
        text += b" "
    return np.frombuffer(bytes(struct.pack("<Q", len(text)) + text + blobs), dtype=np.uint8)


def load_safetensors__memoryview(data):
    buf = memoryview(bytes(data))
    if buf.nbytes < 8:
        raise ValueError("too short")
    n = int.from_bytes(buf[:8], "little")
    if n > buf.nbytes - 8:
        raise ValueError("header length past the end")
    try:
        header = json.loads(bytes(buf[8:8 + n]))
        assert isinstance(header, dict)
    except (ValueError, AssertionError):
        raise ValueError("corrupt header") from None
    meta = header.pop("__metadata__", {})
    kinds = {v: np.dtype(k) if k != "bfloat16" else np.dtype(ml_dtypes.bfloat16) for k, v in _CODES.items()}
    body, out = buf[8 + n:], {}
    for name, info in header.items():
        if info.get("dtype") not in kinds:
            raise ValueError(f"{name}: unknown dtype")
        dt, (b, e) = kinds[info["dtype"]], info["data_offsets"]
        if e > body.nbytes or e - b != dt.itemsize * int(np.prod(info["shape"], dtype=np.int64)) or b < 0:
            raise ValueError(f"{name}: bad data_offsets")
        out[name] = np.array(np.frombuffer(body[b:e], dtype=dt).reshape(info["shape"]))
    return out, meta


def save_safetensors__named_temporary(tensors, path, metadata=None):
    data = safetensors_bytes__bytearray(tensors, metadata)
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(os.path.abspath(path)), delete=False) as f:
        f.write(data.tobytes())
        tmp = f.name
    os.replace(tmp, path)
