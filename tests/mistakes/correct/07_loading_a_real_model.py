import struct
import numpy as np

def dequantize_q4_0__loop(raw):
    out = []
    for blk in raw.reshape(-1, 18):
        d = np.frombuffer(blk[:2].tobytes(), np.float16)[0].astype(np.float32)
        lo = [(int(b) & 15) - 8 for b in blk[2:]]
        hi = [(int(b) >> 4) - 8 for b in blk[2:]]
        out.extend(np.array(lo + hi, np.float32) * d)
    return np.array(out, np.float32)

def read_gguf_string__from_bytes(data, offset):
    n = int.from_bytes(data[offset:offset + 8], "little")
    s = bytes(data[offset + 8: offset + 8 + n]).decode()
    return s, offset + 8 + n
