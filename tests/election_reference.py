"""Slow per-point transcriptions of the DPA, FA and run-off certificates (test oracle for certify).

Plain Python loops over one test point at a time, as the reference scripts
(k1rezaei/DPA-election) lay them out; ``certify`` must agree exactly.
"""

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=None)
def dp(i, j):
    if i == 0 and j == 0:
        return 0
    if (i <= 1 and j <= 2) or (i <= 2 and j <= 1):
        return 1
    if j <= 1:
        return (i + 1) // 2
    if i <= 1:
        return (j + 1) // 2
    return 1 + min(dp(i - 2, j - 1), dp(i - 1, j - 2))


def ceil_half(x):
    return (max(x, 0) + 1) // 2


def greedy(gap, reducers):
    """Buckets needed, taken in descending order of reduction (reference get_sample_cert)."""
    red = sorted((int(r) for r in reducers), reverse=True)
    n = 0
    while gap > 0:
        if n == len(red):
            return 10 ** 9
        gap -= red[n]
        n += 1
    return n


def election(s):
    """s: (K, C) scores of one point -> votes, N1, m1, m2, run-off winner."""
    K, C = s.shape
    votes = np.array([int(np.argmax(row)) for row in s])
    N1 = np.bincount(votes, minlength=C)
    order = np.argsort(-N1, kind="stable")
    m1, m2 = int(order[0]), int(order[1])
    elec = 2 * int((s[:, m1] > s[:, m2]).sum()) - K
    win = m1 if elec > 0 or (elec == 0 and m1 <= m2) else m2
    return votes, N1, m1, m2, win


def g(N1, a, c):
    return int(N1[a]) - int(N1[c]) + int(c > a)


def certify_point(s, label, method, d=1, shifts=(0,)):
    K, C = s.shape
    votes, N1, m1, m2, win = election(s)
    roe = method.endswith("+roe")
    pred = win if roe else m1
    if pred != label:
        return -1
    kd = K
    bucket_models = [[(b + sh) % kd for sh in shifts] for b in range(kd)]
    fa = method.startswith("fa")

    def need(gap, per_model):  # FA: greedy over buckets; DPA: each flip moves at most 2 (or DP)
        return greedy(gap, [sum(per_model[j] for j in ms) for ms in bucket_models])

    if method == "dpa":
        return ceil_half(g(N1, m1, m2)) - 1
    if method == "fa":
        return min(need(g(N1, m1, c), [1 + (v == m1) - (v == c) for v in votes])
                   for c in range(C) if c != m1) - 1
    sec = m1 + m2 - win
    cert_r1 = 10 ** 9
    for c1 in range(C):
        for c2 in range(C):
            if len({c1, c2, win}) < 3:
                continue
            g1, g2 = g(N1, win, c1), g(N1, win, c2)
            if not fa:
                val = dp(max(g1, 0), max(g2, 0))
            else:
                n1 = need(g1, [1 + (v == win) - (v == c1) for v in votes])
                n2 = need(g2, [1 + (v == win) - (v == c2) for v in votes])
                ns = need(g1 + g2, [1 + 2 * (v == win) - (v == c1) - (v == c2) for v in votes])
                val = max(n1, n2, ns)
            cert_r1 = min(cert_r1, val)
    cert_r2 = 10 ** 9
    for c in range(C):
        if c == win:
            continue
        gap2 = 2 * int((s[:, win] > s[:, c]).sum()) - K + (c > win)
        if not fa:
            t1, t2 = ceil_half(g(N1, sec, c)), ceil_half(gap2)
        else:
            t1 = need(g(N1, sec, c), [1 + (v == sec) - (v == c) for v in votes])
            t2 = need(gap2, [2 * int(s[j, win] > s[j, c]) for j in range(K)])
        cert_r2 = min(cert_r2, max(t1, t2))
    # zero poisons never change a prediction (the R2 term can be 0 only with tied scores)
    return max(min(cert_r1, cert_r2) - 1, 0)


def certify(scores, labels, method, d=1, shifts=(0,)):
    return np.array([certify_point(scores[:, i, :], int(labels[i]), method, d, shifts)
                     for i in range(scores.shape[1])])
