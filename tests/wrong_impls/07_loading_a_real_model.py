import struct

import numpy as np

_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _parse(data, fmt, offset_fix=0):
    def string(pos):
        (n,) = struct.unpack_from("<Q", data, pos)
        return bytes(data[pos + 8:pos + 8 + n]).decode("utf-8"), pos + 8 + n

    def val(t, pos):
        if t == 8:
            return string(pos)
        if t == 9:
            et, n = struct.unpack_from("<IQ", data, pos)
            pos += 12
            out = []
            for _ in range(n):
                v, pos = val(et, pos)
                out.append(v)
            return out, pos
        (v,) = struct.unpack_from(fmt[t], data, pos)
        return v, pos + struct.calcsize(fmt[t])

    if bytes(data[:4]) != b"GGUF" or struct.unpack_from("<I", data, 4)[0] not in (2, 3):
        raise ValueError("not a GGUF v2/v3 file")
    (n_kv,) = struct.unpack_from("<Q", data, 16)
    pos, meta = 24, {}
    try:
        for _ in range(n_kv):
            k, pos = string(pos)
            (t,) = struct.unpack_from("<I", data, pos)
            meta[k], pos = val(t, pos + 4)
    except struct.error as e:
        raise ValueError(str(e))
    return meta, pos + offset_fix


def read_gguf_metadata__bool_as_int(data):
    return _parse(data, {**_FMT, 7: "<B"})


def read_gguf_metadata__offset_before_last_pair(data):
    return _parse(data, _FMT, offset_fix=-4)


def dequantize_row_q8_0__unsigned_codes(raw):
    b = raw.reshape(-1, 34)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    return (d * b[:, 2:].astype(np.float32)).reshape(-1)


def dequantize_row_q8_0__not_flattened(raw):
    b = raw.reshape(-1, 34)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    return d * b[:, 2:].copy().view(np.int8).astype(np.float32)


def dequantize_row_q4_1__interleaved(raw):
    b = raw.reshape(-1, 20)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
    m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
    q = np.stack([b[:, 4:] & 0x0F, b[:, 4:] >> 4], axis=-1).reshape(-1, 32).astype(np.float32)
    return (d * q + m).reshape(-1)


def dequantize_row_q4_1__no_min(raw):
    b = raw.reshape(-1, 20)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
    q = np.concatenate([b[:, 4:] & 0x0F, b[:, 4:] >> 4], axis=1).astype(np.float32)
    return (d * q).reshape(-1)


def dequantize_row_q8_0(raw):
    """A right Q8_0 dequantiser: the end-to-end test loads SmolLM2 through both dequantisers."""
    b = raw.reshape(-1, 34)
    return (b[:, :2].copy().view(np.float16).astype(np.float32) * b[:, 2:].copy().view(np.int8)).reshape(-1)


def dequantize_row_q4_1(raw):
    """A right Q4_1 dequantiser, for the end-to-end test."""
    b = raw.reshape(-1, 20)
    d, m = (b[:, k:k + 2].copy().view(np.float16).astype(np.float32) for k in (0, 2))
    return (d * np.concatenate([b[:, 4:] & 0x0F, b[:, 4:] >> 4], axis=1) + m).reshape(-1)
