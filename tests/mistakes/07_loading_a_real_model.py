import struct

import numpy as np


def _parts(raw):
    b = raw.reshape(-1, 18)
    return b[:, :2].copy().view(np.float16).astype(np.float32), b[:, 2:]


def dequantize_q4_0__high_first(raw):
    """the high nibbles come first"""
    d, qs = _parts(raw)
    q = np.concatenate([qs >> 4, qs & 0x0F], axis=1).astype(np.float32)
    return ((q - 8) * d).reshape(-1)


def dequantize_q4_0__not_centred(raw):
    """the values are not centred"""
    d, qs = _parts(raw)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
    return (q * d).reshape(-1)


def dequantize_q4_0__no_scale(raw):
    """the scale is missing"""
    d, qs = _parts(raw)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
    return (q - 8).reshape(-1)


def dequantize_q4_0__not_flat(raw):
    """return a flat array"""
    d, qs = _parts(raw)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
    return (q - 8) * d


def dequantize_q4_0__float16(raw):
    """expected float32"""
    b = raw.reshape(-1, 18)
    d = b[:, :2].copy().view(np.float16)
    qs = b[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float16)
    return ((q - 8) * d).reshape(-1)


def dequantize_q4_0__uint8_wrap(raw):
    """wraps around in uint8"""
    d, qs = _parts(raw)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1)
    return ((q - 8).astype(np.float32) * d).reshape(-1)


def read_gguf_string__offset_without_length(data, offset):
    """it skips the string but not the 8 length bytes"""
    (n,) = struct.unpack_from("<Q", data, offset)
    return data[offset + 8:offset + 8 + n].decode("utf-8"), offset + n


def read_gguf_string__uint32_length(data, offset):
    """the text starts after the 8 length bytes"""
    (n,) = struct.unpack_from("<I", data, offset)
    return data[offset + 4:offset + 4 + n].decode("utf-8"), offset + 4 + n


def read_gguf_string__latin1(data, offset):
    """decode them with .decode('utf-8')"""
    (n,) = struct.unpack_from("<Q", data, offset)
    return data[offset + 8:offset + 8 + n].decode("latin-1"), offset + 8 + n


def read_gguf_string__bytes(data, offset):
    """returned bytes for the string"""
    (n,) = struct.unpack_from("<Q", data, offset)
    return data[offset + 8:offset + 8 + n], offset + 8 + n


def read_gguf_string__chars(data, offset):
    """it counts characters, not bytes"""
    (n,) = struct.unpack_from("<Q", data, offset)
    s = data[offset + 8:offset + 8 + n].decode("utf-8")
    return s, offset + 8 + len(s)


def read_gguf_string__relative(data, offset):
    """relative to the string's start"""
    (n,) = struct.unpack_from("<Q", data, offset)
    return data[offset + 8:offset + 8 + n].decode("utf-8"), 8 + n


# Written after the checks, graded once before any change to them (see the report).


def dequantize_q4_0__scale_float32_bytes(raw):
    """None"""
    b = raw.reshape(-1, 18)
    d = b[:, :2].astype(np.float32).sum(axis=1, keepdims=True) / 256
    qs = b[:, 2:]
    return ((np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8) * d).reshape(-1)


def read_gguf_string__strip(data, offset):
    """None"""
    (n,) = struct.unpack_from("<Q", data, offset)
    return data[offset + 8:offset + 8 + n].decode("utf-8").strip(), offset + 8 + n
