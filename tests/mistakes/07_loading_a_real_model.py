import struct

import numpy as np

_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _meta(data, fmt=_FMT, count="<Q", check_version=True, wrap_errors=True, strlen="<Q"):
    def string(pos):
        (n,) = struct.unpack_from(strlen, data, pos)
        pos += struct.calcsize(strlen)
        return bytes(data[pos:pos + n]).decode("utf-8"), pos + n

    def val(t, pos):
        if t == 8:
            return string(pos)
        if t == 9:
            (et,) = struct.unpack_from("<I", data, pos)
            (n,) = struct.unpack_from(count, data, pos + 4)
            pos += 4 + struct.calcsize(count)
            out = []
            for _ in range(n):
                v, pos = val(et, pos)
                out.append(v)
            return out, pos
        (v,) = struct.unpack_from(fmt[t], data, pos)
        return v, pos + struct.calcsize(fmt[t])

    if bytes(data[:4]) != b"GGUF":
        raise ValueError("bad magic")
    if check_version and struct.unpack_from("<I", data, 4)[0] not in (2, 3):
        raise ValueError("bad version")
    (n_kv,) = struct.unpack_from("<Q", data, 16)
    pos, meta = 24, {}
    try:
        for _ in range(n_kv):
            k, pos = string(pos)
            (t,) = struct.unpack_from("<I", data, pos)
            meta[k], pos = val(t, pos + 4)
    except (struct.error, UnicodeDecodeError) as e:
        if wrap_errors:
            raise ValueError(str(e))
        raise
    return meta, pos


def read_gguf_metadata__no_version_check(data):
    """returned instead of raising ValueError"""
    return _meta(data, check_version=False)


def read_gguf_metadata__struct_error_leaks(data):
    """raised error, expected ValueError"""
    return _meta(data, wrap_errors=False)


def read_gguf_metadata__float32_as_float64(data):
    """None"""
    return _meta(data, fmt={**_FMT, 6: "<d"})


def read_gguf_metadata__array_count_uint32(data):
    """None"""
    return _meta(data, count="<I")


def read_gguf_metadata__rounded_float32(data):
    """return the float32 value exactly as stored"""
    meta, pos = _meta(data)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in meta.items()}, pos


def read_gguf_metadata__offset_from_zero(data):
    """the offset is"""
    meta, pos = _meta(data)
    return meta, pos - 24


def dequantize_row_q8_0__big_endian_scale(raw):
    """the scale is read big-endian"""
    b = raw.reshape(-1, 34)
    d = b[:, :2].copy().view(">f2").astype(np.float32)
    return (d * b[:, 2:].copy().view(np.int8)).reshape(-1)


def dequantize_row_q8_0__no_scale(raw):
    """the scale is missing"""
    return raw.reshape(-1, 34)[:, 2:].copy().view(np.int8).astype(np.float32).reshape(-1)


def dequantize_row_q8_0__divides(raw):
    """the scale is divided, not multiplied"""
    b = raw.reshape(-1, 34)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    with np.errstate(all="ignore"):
        return (b[:, 2:].copy().view(np.int8) / d).astype(np.float32).reshape(-1)


def dequantize_row_q8_0__float64(raw):
    """dtype float64, expected float32"""
    b = raw.reshape(-1, 34)
    d = b[:, :2].copy().view(np.float16).astype(np.float64)
    return (d * b[:, 2:].copy().view(np.int8)).reshape(-1)


def dequantize_row_q8_0__scale_at_end(raw):
    """the block is 34 bytes, scale first"""
    b = raw.reshape(-1, 34)
    d = b[:, 32:].copy().view(np.float16).astype(np.float32)
    return (d * b[:, :32].copy().view(np.int8)).reshape(-1)


def dequantize_row_q4_1__high_first(raw):
    """the high nibbles come first"""
    b = raw.reshape(-1, 20)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
    m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
    q = np.concatenate([b[:, 4:] >> 4, b[:, 4:] & 0x0F], axis=1).astype(np.float32)
    return (d * q + m).reshape(-1)


def dequantize_row_q4_1__swapped_d_m(raw):
    """d and m are swapped"""
    b = raw.reshape(-1, 20)
    m = b[:, 0:2].copy().view(np.float16).astype(np.float32)
    d = b[:, 2:4].copy().view(np.float16).astype(np.float32)
    q = np.concatenate([b[:, 4:] & 0x0F, b[:, 4:] >> 4], axis=1).astype(np.float32)
    return (d * q + m).reshape(-1)


def dequantize_row_q4_1__centred_like_q4_0(raw):
    """the codes are centred by 8 as in Q4_0"""
    b = raw.reshape(-1, 20)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
    m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
    q = np.concatenate([b[:, 4:] & 0x0F, b[:, 4:] >> 4], axis=1).astype(np.float32)
    return (d * (q - 8) + m).reshape(-1)


def dequantize_row_q4_1__subtracts_min(raw):
    """m is subtracted"""
    b = raw.reshape(-1, 20)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
    m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
    q = np.concatenate([b[:, 4:] & 0x0F, b[:, 4:] >> 4], axis=1).astype(np.float32)
    return (d * q - m).reshape(-1)


def dequantize_row_q4_1__writes_into_raw(raw):
    """the call changed its input raw"""
    b = raw.reshape(-1, 20)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
    m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
    qs = b[:, 4:]
    hi = qs >> 4
    qs &= 0x0F                                     # masks the codes in place: raw is changed
    q = np.concatenate([qs, hi], axis=1).astype(np.float32)
    return (d * q + m).reshape(-1)


def dequantize_row_q8_0(raw):
    """A right Q8_0 dequantiser: the end-to-end test loads SmolLM2 through both dequantisers."""
    b = raw.reshape(-1, 34)
    return (b[:, :2].copy().view(np.float16).astype(np.float32) * b[:, 2:].copy().view(np.int8)).reshape(-1)


def dequantize_row_q4_1(raw):
    """A right Q4_1 dequantiser, for the end-to-end test."""
    b = raw.reshape(-1, 20)
    d, m = (b[:, k:k + 2].copy().view(np.float16).astype(np.float32) for k in (0, 2))
    return (d * np.concatenate([b[:, 4:] & 0x0F, b[:, 4:] >> 4], axis=1) + m).reshape(-1)
