import struct

import numpy as np


def read_gguf_metadata__cursor_class(data):
    data = bytes(data)
    dtypes = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}

    class Cursor:
        pos = 0

        def take(self, n):
            if self.pos + n > len(data):
                raise ValueError("truncated GGUF data")
            out = data[self.pos:self.pos + n]
            self.pos += n
            return out

        def scalar(self, t):
            dt = np.dtype(dtypes[t])
            return np.frombuffer(self.take(dt.itemsize), dt)[0].item()

        def string(self):
            return self.take(self.scalar(10)).decode("utf-8")

        def value(self, t):
            if t == 8:
                return self.string()
            if t == 9:
                et, n = self.scalar(4), self.scalar(10)
                return [self.value(et) for _ in range(n)]
            if t not in dtypes:
                raise ValueError(f"unknown type {t}")
            return self.scalar(t)

    c = Cursor()
    if c.take(4) != b"GGUF":
        raise ValueError("bad magic")
    if c.scalar(4) not in (2, 3):
        raise ValueError("unsupported version")
    c.scalar(10)
    meta = {}
    for _ in range(c.scalar(10)):
        k = c.string()
        meta[k] = c.value(c.scalar(4))
    return meta, c.pos


def dequantize_row_q8_0__structured(raw):
    rec = np.frombuffer(np.ascontiguousarray(raw).tobytes(), dtype=[("d", "<f2"), ("q", "i1", (32,))])
    return (rec["q"] * rec["d"].astype(np.float32)[:, None]).reshape(-1)


def dequantize_row_q4_1__unpack_bits(raw):
    b = np.array(raw, dtype=np.uint8).reshape(-1, 20)
    d = np.frombuffer(b[:, :2].tobytes(), "<f2").astype(np.float32)[:, None]
    m = np.frombuffer(b[:, 2:4].tobytes(), "<f2").astype(np.float32)[:, None]
    q = np.empty((b.shape[0], 32), np.float32)
    q[:, :16] = b[:, 4:] % 16
    q[:, 16:] = b[:, 4:] // 16
    return (q * d + m).reshape(-1)
