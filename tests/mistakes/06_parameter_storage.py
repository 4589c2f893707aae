import json
import struct

import numpy as np


def to_bfloat16_bits__ties_down(x):
    """exact ties round down"""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF) >> 16).astype(np.uint16)


def to_bfloat16_bits__no_shift(x):
    """shift right by 16 after rounding"""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return (bits + 0x7FFF + ((bits >> 16) & 1)).astype(np.uint16)


def to_bfloat16_bits__value_cast(x):
    """converted to integers"""
    return x.astype(np.uint16)


def to_bfloat16_bits__uint32(x):
    """expected uint16"""
    bits = x.astype(np.float32).view(np.uint32)
    return (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16


def to_bfloat16_bits__flattened(x):
    """keep the input's shape"""
    bits = x.astype(np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def parse_safetensors_header__first_byte(data):
    """the JSON ends early"""
    n = data[0]
    return json.loads(data[8:8 + n]), 8 + n


def parse_safetensors_header__big_endian(data):
    """None"""
    (n,) = struct.unpack(">Q", data[:8])
    return json.loads(data[8:8 + n]), 8 + n


def parse_safetensors_header__reads_past(data):
    """json.loads read past the header"""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:].decode("utf-8", errors="replace")), 8 + n


def parse_safetensors_header__drops_metadata(data):
    """lacks its '__metadata__' entry"""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    return header, 8 + n


def parse_safetensors_header__uint16(data):
    """the JSON ends early"""
    (n,) = struct.unpack("<H", data[:2])
    return json.loads(data[8:8 + n]), 8 + n


# Written after the checks, graded once before any change to them (see the report).


def to_bfloat16_bits__float16(x):
    """None"""
    return x.astype(np.float16).view(np.uint16)


def parse_safetensors_header__offset_8(data):
    """None"""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), 8
