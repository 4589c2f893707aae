import json
import struct

import numpy as np


def to_bfloat16_bits__truncate(x):
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def to_bfloat16_bits__ties_up(x):
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x8000) >> 16).astype(np.uint16)


def parse_safetensors_header__offset_without_length(data):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), n
