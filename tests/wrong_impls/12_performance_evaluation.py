import numpy as np


def perplexity_windows__disjoint(n_tokens, window, stride):
    out, scored_to, begin = [], 1, 0
    while scored_to < n_tokens:
        end = min(begin + window, n_tokens)
        out.append((begin, end, max(scored_to, begin + 1)))
        scored_to, begin = end, begin + window
    return out


def perplexity_windows__scores_overlap_twice(n_tokens, window, stride):
    out, begin = [], 0
    while True:
        end = min(begin + window, n_tokens)
        out.append((begin, end, begin + 1))
        if end == n_tokens:
            return out
        begin += stride


def time_calls__no_warmup(fn, repeat=5, warmup=1, *, clock=None, sync=None):
    times = np.empty(repeat)
    for i in range(repeat):
        t0 = clock()
        sync(fn())
        times[i] = clock() - t0
    return times


def time_calls__no_sync(fn, repeat=5, warmup=1, *, clock=None, sync=None):
    for _ in range(warmup):
        fn()
    times = np.empty(repeat)
    for i in range(repeat):
        t0 = clock()
        fn()
        times[i] = clock() - t0
    return times


def _timed(fn, repeat, warmup, clock, sync):
    for _ in range(warmup):
        sync(fn())
    out = []
    for _ in range(repeat):
        t0 = clock()
        sync(fn())
        out.append(clock() - t0)
    return np.array(out)


def measure_speed__mean(prefill_fn, n_prompt, decode_fn=None, *, repeat=5, decode_steps=16, warmup=1, clock=None,
                        sync=None):
    pre = _timed(prefill_fn, repeat, warmup, clock, sync)
    out = {"prefill_tok_s": n_prompt / float(pre.mean())}
    if decode_fn is not None:
        dec = _timed(decode_fn, decode_steps, warmup, clock, sync)
        out["decode_tok_s"] = 1.0 / float(dec.mean())
        out.update({f"decode_p{q}_ms": 1e3 * float(np.percentile(dec, q)) for q in (50, 90, 99)})
    return out


def measure_speed__seconds(prefill_fn, n_prompt, decode_fn=None, *, repeat=5, decode_steps=16, warmup=1, clock=None,
                           sync=None):
    pre = _timed(prefill_fn, repeat, warmup, clock, sync)
    out = {"prefill_tok_s": n_prompt / float(np.median(pre))}
    if decode_fn is not None:
        dec = _timed(decode_fn, decode_steps, warmup, clock, sync)
        out["decode_tok_s"] = 1.0 / float(np.median(dec))
        out.update({f"decode_p{q}_ms": float(np.percentile(dec, q)) for q in (50, 90, 99)})
    return out
