import struct

import numpy as np


def dequantize_q4_0__interleaved(raw):
    b = raw.reshape(-1, 18)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    qs = b[:, 2:]
    q = np.stack([qs & 0x0F, qs >> 4], axis=-1).reshape(-1, 32).astype(np.float32) - 8
    return (q * d).reshape(-1)


def read_gguf_string__big_endian(data, offset):
    (n,) = struct.unpack_from(">Q", data, offset)
    start = offset + 8
    return data[start:start + n].decode("utf-8"), start + n
