def text_to_bytes__bytes_object(text):
    """returned a bytes object"""
    return text.encode("utf-8")


def text_to_bytes__utf16(text):
    """the bytes of UTF-16"""
    return list(text.encode("utf-16"))


def text_to_bytes__latin1_ignore(text):
    """returned code points (ord), not bytes"""
    return list(text.encode("latin-1", errors="ignore"))


def text_to_bytes__ascii_only(text):
    """raised UnicodeEncodeError"""
    return list(text.encode("ascii"))


def text_to_bytes__mod_256(text):
    """returned code points (ord), not bytes"""
    return [ord(c) % 256 for c in text]


def get_pair_counts__wraps_around(ids):
    """wraps around from the end to the start"""
    from collections import Counter

    return dict(Counter(zip(ids, ids[1:] + ids[:1])))


def get_pair_counts__misses_last(ids):
    """the last pair"""
    counts = {}
    for i in range(len(ids) - 2):
        counts[(ids[i], ids[i + 1])] = counts.get((ids[i], ids[i + 1]), 0) + 1
    return counts


def get_pair_counts__skip_one(ids):
    """skip a token"""
    from collections import Counter

    return dict(Counter(zip(ids, ids[2:])))


def get_pair_counts__non_overlapping(ids):
    """the counts of [(5, 5)] are wrong"""
    counts, i = {}, 0
    while i + 1 < len(ids):
        p = (ids[i], ids[i + 1])
        counts[p] = counts.get(p, 0) + 1
        i += 2 if p[0] == p[1] else 1
    return counts


def merge__first_only(ids, pair, new_id):
    """only the first occurrence was merged"""
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == tuple(pair):
            return ids[:i] + [new_id] + ids[i + 2:]
    return list(ids)


def merge__misses_end(ids, pair, new_id):
    """the pair at the very end of the list was not merged"""
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == tuple(pair) and i + 2 < len(ids):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out + ids[i:]


def merge__in_place(ids, pair, new_id):
    """the call changed its input ids"""
    i = 0
    while i < len(ids) - 1:
        if ids[i] == pair[0] and ids[i + 1] == pair[1]:
            ids[i:i + 2] = [new_id]
        i += 1
    return ids


def merge__drops_last_token(ids, pair, new_id):
    """None"""
    out, i = [], 0
    while i < len(ids) - 1:
        if ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge__keeps_length(ids, pair, new_id):
    """must become ONE token"""
    out = list(ids)
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == tuple(pair):
            out[i] = new_id
    return out


# Written after the checks, graded once before any change to them (see the report).
def text_to_bytes__strips(text):
    """None"""
    return list(text.strip().encode("utf-8"))


def get_pair_counts__string_keys(ids):
    """None"""
    out = {}
    for a, b in zip(ids, ids[1:]):
        out[f"{a},{b}"] = out.get(f"{a},{b}", 0) + 1
    return out


def merge__reversed_pair(ids, pair, new_id):
    """None"""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[1] and ids[i + 1] == pair[0]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
