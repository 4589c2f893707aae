def text_to_bytes__code_points(text):
    return [ord(c) for c in text]


def get_pair_counts__once_each(ids):
    return {p: 1 for p in zip(ids, ids[1:])}


def merge__overlapping(ids, pair, new_id):
    out = []
    for i in range(len(ids)):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
        elif i > 0 and (ids[i - 1], ids[i]) == pair:
            continue
        else:
            out.append(ids[i])
    return out
