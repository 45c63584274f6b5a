"""HARPE's contribution: one RoPE base per attention head, chosen by a peak-valley search, trained in one stage at the
target length (spec §3.2-3.3). The rotation itself is the shared ``"rope"`` position part with ``bases`` (one per KV
head, ``replicate.models.position.RoPE``); this module holds what chooses the bases and wires the arms.

    θ_{h,i} = b_h^(-2i/d),  i = 0..d/2-1           per-head frequencies (Eq. 6-8); q, k of head h rotated with them
    f_b(m)  = (2/√d) Σ_i cos(m θ_i(b))               the "attention waveform" of base b (all-ones q = k), m = 0..M
    P(b), V(b) = prominent peaks / valleys of f_b over m in [1, M]   (scipy.signal.find_peaks with a prominence)
    B_c = {b_min + k s : k = 1..(b_max - b_min)/s}   the candidate grid (Eq. 10)
    greedy: B_s = {b_min}; while |B_s| < N:
        d_j = Σ_{p ∈ P(b_j)} min_{v ∈ V_s} |p - v|  +  Σ_{v ∈ V(b_j)} min_{p ∈ P_s} |v - p|   (Algorithm 1)
        add argmin_j d_j to B_s (and its peaks / valleys to P_s / V_s); heads get B_s in ascending order

How peaks are matched is not specified in the paper (spec §3.3): ours matches each extremum to the nearest one of
the opposite kind in the current set (``match="nearest"``), optionally divides each sum by its count
(``normalise=True``: raw sums favour candidates with few extrema) and keeps only extrema whose prominence is at
least ``prominence`` times the waveform's range (the high-frequency pairs ripple every few tokens). All three are
options. Uniform bases (Eq. 9): b_h = b_min + h (b_max - b_min) / (N - 1), ascending or descending.

Scaling to our lengths (spec §6, our heuristic): the paper extends 32x and uses b_min = 100 x, b_max = 500 x the
original base; we keep the log-ratio, b_min = b0 s^(ln 100 / ln 32), b_max = b0 s^(ln 500 / ln 32) for an s-fold
extension, and the paper's 133 candidates (stride (b_max - b_min) / 133).
"""

from __future__ import annotations

import math

import numpy as np

PAPER_B_MIN, PAPER_B_MAX, PAPER_STRIDE, PAPER_EXTENSION = 1e6, 5e6, 3e4, 32  # spec §3.3 (LLaMA-2: 10k -> 1M..5M)
PAPER_TABLE2 = (1.00, 1.15, 1.30, 1.45, 2.17, 2.20, 2.23, 2.47, 2.50, 2.65, 2.68, 2.71, 2.74, 2.80, 2.83, 2.92,
                3.01, 3.04, 3.10, 3.13, 3.16, 3.22, 3.43, 3.46, 3.61, 3.88, 4.09, 4.15, 4.39, 4.45, 4.51, 4.54)  # x1e6


def scaled_range(base: float, factor: float) -> tuple[float, float]:
    """(b_min, b_max) for a ``factor``-fold extension from ``base``, keeping the paper's log-ratios (spec §6):
    32x -> 100 x and 500 x the base, so b_min = base · factor^(ln 100 / ln 32), b_max = base · factor^(ln 500 / ln 32)."""
    if factor <= 1:
        raise ValueError(f"factor: an extension needs factor > 1, got {factor}")
    e_min, e_max = math.log(100) / math.log(PAPER_EXTENSION), math.log(500) / math.log(PAPER_EXTENSION)
    return base * factor ** e_min, base * factor ** e_max


def candidate_grid(b_min: float, b_max: float, stride: float) -> np.ndarray:
    """B_c = {b_min + k s : k = 1..floor((b_max - b_min) / s)} (Eq. 10; b_min itself starts the set)."""
    if not (0 < b_min < b_max) or stride <= 0:
        raise ValueError(f"candidate grid: need 0 < b_min < b_max and stride > 0, got {b_min}, {b_max}, {stride}")
    k = np.arange(1, int(math.floor((b_max - b_min) / stride + 1e-9)) + 1)
    return b_min + k * stride


def waveform(base: float, head_dim: int, length: int) -> np.ndarray:
    """f_b(m) = (2/√d) Σ_{i<d/2} cos(m b^(-2i/d)) for m = 0..length (float64): the pre-softmax score of all-ones q = k
    at relative distance m (RoPE's long-term decay curve; the Attention-Buckets definition)."""
    theta = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    m = np.arange(length + 1, dtype=np.float64)
    return 2.0 / math.sqrt(head_dim) * np.cos(np.outer(m, theta)).sum(1)


def extrema(base: float, head_dim: int, length: int, prominence: float) -> tuple[np.ndarray, np.ndarray]:
    """(peaks, valleys): positions m in [1, length] of the local maxima / minima of f_b whose prominence is at least
    ``prominence`` times the range of f_b over [1, length] (0: every local extremum)."""
    from scipy.signal import find_peaks

    f = waveform(base, head_dim, length)[1:]
    prom = prominence * float(f.max() - f.min()) or None
    peaks, _ = find_peaks(f, prominence=prom)
    valleys, _ = find_peaks(-f, prominence=prom)
    return peaks + 1, valleys + 1


def _distance(points: np.ndarray, targets: np.ndarray, normalise: bool, length: int) -> float:
    """Σ_{x ∈ points} min_{y ∈ targets} |x - y| (the mean with ``normalise``); no targets: each point counts
    ``length`` (as far as anything can be); no points: 0."""
    if len(points) == 0:
        return 0.0
    if len(targets) == 0:
        d = np.full(len(points), float(length))
    else:
        t = np.sort(targets)
        i = np.clip(np.searchsorted(t, points), 1, len(t) - 1) if len(t) > 1 else np.zeros(len(points), int)
        d = np.minimum(np.abs(points - t[i]), np.abs(points - t[np.maximum(i - 1, 0)])).astype(float)
    return float(d.mean() if normalise else d.sum())


def peak_valley_search(n: int, b_min: float, b_max: float, stride: float, head_dim: int, length: int, *,
                       prominence: float = 0.05, normalise: bool = True) -> tuple[float, ...]:
    """The greedy peak-valley complementarity search (Eq. 10, Algorithm 1): ``n`` distinct bases, b_min first, then
    each the candidate whose peaks sit nearest the current set's valleys and whose valleys sit nearest its peaks;
    returned in ascending order (the order heads receive them)."""
    grid = candidate_grid(b_min, b_max, stride)
    if n < 1 or n - 1 > len(grid):
        raise ValueError(f"n: need 1 <= n <= {len(grid) + 1} (the grid has {len(grid)} candidates), got {n}")
    ext = {float(b): extrema(float(b), head_dim, length, prominence) for b in np.concatenate([[b_min], grid])}
    chosen = [float(b_min)]
    peaks, valleys = ext[chosen[0]]
    left = [float(b) for b in grid]
    while len(chosen) < n:
        scores = [_distance(ext[b][0], valleys, normalise, length) + _distance(ext[b][1], peaks, normalise, length)
                  for b in left]
        best = left.pop(int(np.argmin(scores)))  # first index on ties: the smallest base
        chosen.append(best)
        peaks = np.concatenate([peaks, ext[best][0]])
        valleys = np.concatenate([valleys, ext[best][1]])
    return tuple(sorted(chosen))


def uniform_bases(n: int, b_min: float, b_max: float, order: str = "ascending") -> tuple[float, ...]:
    """b_h = b_min + h (b_max - b_min) / (N - 1), h = 0..N-1 (Eq. 9), ascending or descending over the heads."""
    if order not in ("ascending", "descending"):
        raise ValueError(f"order: must be 'ascending' or 'descending', got {order!r}")
    b = [b_min + h * (b_max - b_min) / max(1, n - 1) for h in range(n)]
    return tuple(b if order == "ascending" else b[::-1])


def complementarity(bases, head_dim: int, length: int, prominence: float = 0.05) -> float:
    """A diagnostic of how well a set's waveforms fill each other's valleys (not a paper metric, not a claim): the
    minimum over relative distances m in [1, length] of the heads' mean waveform (higher: no distance is
    systematically under-attended by every head at once)."""
    f = np.mean([waveform(b, head_dim, length)[1:] for b in bases], axis=0)
    return float(f.min())


def multi_stage_schedule(base: float, b_min: float, b_max: float, short_len: int, long_len: int,
                         n_stages: int = 3) -> list[tuple[float, int]]:
    """ABF multi-stage (spec §4.3, scaled): (base, length) per stage, lengths doubling up to ``long_len`` (starting
    at long_len / 2^(n-1), at least ``short_len``), bases geometric from b_min to b_max (3 stages: b_min,
    √(b_min b_max), b_max; the paper's 1M -> 2M -> 5M with 32k -> 64k -> 128k)."""
    if n_stages < 1:
        raise ValueError(f"n_stages: must be >= 1, got {n_stages}")
    lens = [max(short_len, long_len // 2 ** (n_stages - 1 - i)) for i in range(n_stages)]
    if n_stages == 1:
        return [(b_max, long_len)]
    bases = [b_min * (b_max / b_min) ** (i / (n_stages - 1)) for i in range(n_stages)]
    return list(zip(bases, lens))


def position_kwargs(arm: str, *, bases=None, factor: float = 1.0, short_len: int | None = None) -> tuple:
    """The decoder's ``position_kwargs`` of an arm (the base of ABF arms is ``rope_theta`` instead)."""
    if arm in ("harpe", "harpe_uniform", "harpe_short"):
        return (("bases", tuple(float(b) for b in bases)),)
    if arm == "pi":
        return (("scaling", "linear"), ("factor", float(factor)))
    if arm == "yarn":
        return (("scaling", "yarn"), ("factor", float(factor)), ("original_max_seq_len", int(short_len)))
    return ()
