def text_to_bytes__bytearray(text):
    return [b for b in bytearray(text, "utf-8")]

def get_pair_counts__loop(ids):
    c = {}
    for i in range(len(ids) - 1):
        c[ids[i], ids[i + 1]] = c.get((ids[i], ids[i + 1]), 0) + 1
    return c

def merge__for(ids, pair, new_id):
    out, skip = [], False
    for i, t in enumerate(ids):
        if skip:
            skip = False
            continue
        if i + 1 < len(ids) and (t, ids[i + 1]) == tuple(pair):
            out.append(new_id)
            skip = True
        else:
            out.append(t)
    return out
