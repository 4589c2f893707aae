import json, struct
import numpy as np

def to_bfloat16_bits__int64(x):
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.int64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)

def parse_safetensors_header__frombytes(data):
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), 8 + n
