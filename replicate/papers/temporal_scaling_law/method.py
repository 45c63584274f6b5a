"""What the Temporal Scaling Law contributes, beside the spec (``../shared/papers/temporal_scaling_law.md`` §3).

Stage 1, one checkpoint (§3.2). The dynamic hyperbolic law L_i = a0 / (1 + a1 i) + a2 is fitted in its
identifiable form

    L_i = c / (b + i) + a2,        c = a0 / a1 >= 0,  b = 1 / a1 in [0, n],  a2 > 0,

by weighted least squares against the per-position standard errors. For fixed b the law is linear in (c, a2), so
the fit profiles b: the weighted linear solution on a grid of b (0 and log-spaced up to n), then a bounded scalar
refinement around the best grid point. That is the global optimum by construction; a second grid minimum within
Δχ² < 1 is flagged (``multimodal``), a b at either end of its range is flagged (``b_at_bound``), and the Fisher
covariance gives standard errors and the parameters' correlations. The spec's a0 = c / b and a1 = 1 / b are
derived (infinite when b = 0). A constant and a power law in i (L_i = E + A i^-α, profiled over α the same way) are
fitted beside it for the model comparison of claim C1 (AIC = χ² + 2k).

Stage 2, a trajectory over training (§3.3). A ``Clock`` holds, per checkpoint, the progress u = N / N_T, the
cumulative learning rate S1 and the annealing area S2 of Tissue et al. (2024) (both normalised to 1 at the end of
the run) and the post-warm-up progress p. A temporal form is linear in its coefficients given at most one shape
parameter θ, which is profiled on a bounded grid and refined:

    lr_power          y = v1 + (v0 − v1) h(S1)  [− C S2]   h = (g(S1) − g(S1e)) / (g(S1s) − g(S1e)),
                      g(x) = (x^-α − 1)/α, α in [−2, 10]     (a power law in S1; α = 0 is ln S1, the Box-Cox limit)
    power             the same in u (schedule-unaware)
    log               y = α + β ln u                         (the spec's a0 form)
    hyperbolic        y = α + β / (u + γ),  γ in [1e-4, 100] (the spec's a1 form)
    piecewise_cosine  y = α + β cos(π p)                     (the spec's a2 form: it follows the cosine schedule)
    piecewise_cosine_linear  y = α + β cos(π p) + δ p        (the spec's δ2 term, kept only where it improves the
                                                              fit: :func:`spec_a2`)
    constant          y = α

``lr_power`` and ``power`` are anchored (v0, v1 are the trajectory's values at the first and last observed
checkpoint), so their coefficients are not a ridge of (asymptote, amplitude); the annealing term enters only when
the observed prefix holds part of the decay (``anneal_min_frac`` of the final S2). Every fit reports whether it
converged, whether θ sits at a bound, the largest correlation between its free parameters and its in-sample χ²
against the points' standard errors (a form that misses its own prefix beyond noise has nothing to extrapolate);
the predictions are checked against the quantity's domain (a loss in (0, ln V]) by the caller. The same forms fitted to the whole loss
L(N) are the whole-loss baselines: ``lr_power`` on L(N) is the learning-rate-annealing law (the baseline with the
schedule awareness TSL's a2 has), ``power`` on L(N) is E + A·N^-α.

Also: the position-weighted loss of the v1 re-weighting experiment (§3.6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, special

from replicate.models.lm import CausalLM, OptimConfig, lr_at, per_token_nll

# ================================================================================================ stage 1


def hyperbolic(i, c, b, a2):
    """The law in its identifiable form:  L_i = c / (b + i) + a2."""
    return c / (b + np.asarray(i, dtype=float)) + a2


def mean_hyperbolic(n: int, c, b, a2, start: int = 1):
    """(1/n) Σ_{i=start}^{start+n-1} L_i in closed form (digamma): Σ 1/(b + i) = ψ(b + start + n) − ψ(b + start)."""
    c, b, a2 = (np.asarray(x, dtype=float) for x in (c, b, a2))
    return a2 + c / n * (special.digamma(b + start + n) - special.digamma(b + start))


def spec_parameters(c, b, a2) -> tuple:
    """The spec's (a0, a1, a2) of a fit in the identifiable form: a1 = 1/b, a0 = c/b (infinite when b = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.asarray(b, dtype=float)
        return np.where(b > 0, c / b, np.inf), np.where(b > 0, 1.0 / b, np.inf), a2


def r2(y, yhat) -> float:
    """Coefficient of determination (NaN for a constant ``y``)."""
    ss = float(np.sum((y - np.mean(y)) ** 2))
    return 1.0 - float(np.sum((y - yhat) ** 2)) / ss if ss > 0 else float("nan")


def _two_param(g_KN, L_N, w_N, nonneg: bool = True):
    """Weighted least squares of L on [g_k, 1] for every row g_k at once: (slope_K, intercept_K, chi2_K); with
    ``nonneg`` a negative slope is replaced by the constant fit (slope 0)."""
    W = w_N.sum()
    gbar, Lbar = g_KN @ w_N / W, float(L_N @ w_N / W)
    dg = g_KN - gbar[:, None]
    sxx = (dg**2) @ w_N
    slope = np.where(sxx > 0, (dg * (L_N - Lbar)) @ w_N / np.where(sxx > 0, sxx, 1.0), 0.0)
    if nonneg:
        slope = np.maximum(slope, 0.0)
    icpt = Lbar - slope * gbar
    resid = L_N[None, :] - slope[:, None] * g_KN - icpt[:, None]
    return slope, icpt, (resid**2) @ w_N


def _profile(design, lo: float, hi: float, L, w, grid: np.ndarray):
    """Minimise χ²(θ) of the two-parameter fit with basis ``design(θ)`` over θ in [lo, hi]: grid, then a bounded
    refinement between the best grid point's neighbours. Returns (θ, slope, intercept, χ², grid χ², grid)."""
    G = np.stack([design(t) for t in grid])
    _, _, chi = _two_param(G, L, w)
    k = int(np.argmin(chi))
    a, z = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    f = lambda t: float(_two_param(design(t)[None], L, w)[2][0])
    if a < z:
        res = optimize.minimize_scalar(f, bounds=(a, z), method="bounded", options={"xatol": 1e-10 * max(1, z)})
        t = float(res.x) if res.fun <= chi[k] else float(grid[k])
    else:
        t = float(grid[k])
    s, c, x = (v[0] for v in _two_param(design(t)[None], L, w))
    return t, float(s), float(c), float(x), chi, grid


def _b_grid(i: np.ndarray, b_max: float) -> np.ndarray:
    """The profile's grid of b: 0 (the pure 1/i law) and log-spaced values up to ``b_max``; without 0 when a
    position 0 makes b = 0 a pole."""
    g = np.geomspace(1e-3, b_max, 160)
    return np.concatenate([[0.0], g]) if float(np.min(i)) >= 1 else g


def _b_at_bound(b: float, b_max: float, chi_of, i_min: float) -> bool:
    """Whether the profiled b sits at a bound of [0, b_max] in a way that matters. b = 0 is the law's own pure-1/i
    limit, not an artefact, when the positions start at 1: it is admitted unless the profile still falls below 0
    (χ² at b = −0.05 lower than at 0: the data want a b the law cannot take). With positions from 0, b = 0 is the
    pole and always a bound."""
    if b >= b_max * (1 - 1e-6):
        return True
    if b > 1e-3:
        return False
    return i_min < 1 or chi_of(-0.05) < chi_of(0.0)


def fit_positions(i: np.ndarray, L: np.ndarray, se: np.ndarray | None = None) -> dict:
    """Stage 1: the hyperbolic law L_i = c/(b+i) + a2 (b in [0, n]) by weighted least squares against ``se``, with
    its diagnostics and the constant / power-law fits beside it (module docstring)."""
    i, L = np.asarray(i, dtype=float), np.asarray(L, dtype=float)
    w = 1.0 / np.asarray(se, dtype=float) ** 2 if se is not None else np.ones_like(L)
    n = len(L)
    b_max = float(n)
    grid = _b_grid(i, b_max)
    b, c, a2, chi, chi_grid, _ = _profile(lambda t: 1.0 / (t + i), 0.0, b_max, L, w, grid)
    # another local minimum of the profile, as good within Δχ² < 1, away from the best one: the optimum is ambiguous
    mins = [k for k in range(1, len(grid) - 1) if chi_grid[k] <= chi_grid[k - 1] and chi_grid[k] <= chi_grid[k + 1]]
    far = [k for k in mins if chi_grid[k] <= chi + 1 and abs(math.log((grid[k] + 1e-3) / (b + 1e-3))) > 1.0]
    # Fisher covariance of (c, b, a2): J = [1/(b+i), -c/(b+i)^2, 1], weights w
    J = np.stack([1.0 / (b + i), -c / (b + i) ** 2, np.ones_like(i)], axis=1)
    cov = _inverse(J.T @ (J * w[:, None]))
    sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    corr = cov / np.outer(sd, sd) if np.all(sd > 0) else np.full((3, 3), np.nan)
    chi_const = float(((L - L @ w / w.sum()) ** 2) @ w)
    k = i - i.min() + 1.0  # tokens of context (i counted from 1), so the power law is finite at a position 0
    _, _, _, chi_power, _, _ = _profile(lambda t: k ** (-t), 0.0, 3.0, L, w, np.linspace(0.01, 3.0, 120))
    a0, a1, _ = spec_parameters(c, b, a2)
    # standard errors of the derived a0 = c/b and a1 = 1/b (delta method on the Fisher covariance of (c, b))
    se_a0 = se_a1 = np.inf
    if b > 0:
        g0, g1 = np.array([1.0 / b, -c / b**2]), np.array([0.0, -1.0 / b**2])
        se_a0, se_a1 = (float(np.sqrt(max(g @ cov[:2, :2] @ g, 0.0))) for g in (g0, g1))
    dof = max(1, n - 3)
    chi_of = lambda t: float(_two_param((1.0 / (t + i))[None], L, w)[2][0])
    return {"c": c, "b": b, "a2": a2, "se_c": sd[0], "se_b": sd[1], "se_a2": sd[2], "se_a0": se_a0, "se_a1": se_a1,
            "corr_cb": corr[0, 1], "corr_ca2": corr[0, 2], "corr_ba2": corr[1, 2],
            "chi2_red": chi / dof, "r2": r2(L, hyperbolic(i, c, b, a2)),
            "b_at_bound": _b_at_bound(b, b_max, chi_of, float(i.min())), "multimodal": bool(far),
            "aic_hyperbolic": chi + 6.0, "aic_constant": chi_const + 2.0, "aic_power": chi_power + 6.0,
            "a0": float(a0), "a1": float(a1)}


def shared_b(i: np.ndarray, curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, bool]:
    """One b for several checkpoints: the minimum over b in [0, n] of the summed χ² of the per-checkpoint fits with
    c and a2 free (linear given b); returns (b, at a bound: :func:`_b_at_bound`). Sharing b is what makes c and a2
    precise: alone, each checkpoint's b is loosely determined and correlated with its c (corr ≈ 0.9 at this scale)."""
    i = np.asarray(i, dtype=float)
    b_max = float(len(i))
    grid = _b_grid(i, b_max)
    total = lambda bs: _two_param_many(1.0 / (np.atleast_1d(bs)[:, None] + i), curves)
    chi = total(grid)
    k = int(np.argmin(chi))
    a, z = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    res = optimize.minimize_scalar(lambda t: float(total(t)[0]), bounds=(a, z), method="bounded",
                                   options={"xatol": 1e-10 * max(1.0, z)})
    b = float(res.x) if res.fun <= chi[k] else float(grid[k])
    return b, _b_at_bound(b, b_max, lambda t: float(total(t)[0]), float(i.min()))


def _two_param_many(g_KN: np.ndarray, curves: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Σ over curves of :func:`_two_param`'s χ² for every basis row g_k at once (the curves stacked)."""
    L = np.stack([c[0] for c in curves])  # (C, N)
    w = 1.0 / np.stack([c[1] for c in curves]) ** 2
    W = w.sum(1)  # (C,)
    gbar = (w @ g_KN.T) / W[:, None]  # (C, K)
    Lbar = (L * w).sum(1) / W  # (C,)
    sxx = (w @ (g_KN**2).T) - W[:, None] * gbar**2
    sxy = ((L * w) @ g_KN.T) - W[:, None] * gbar * Lbar[:, None]
    slope = np.maximum(np.where(sxx > 0, sxy / np.where(sxx > 0, sxx, 1.0), 0.0), 0.0)
    syy = ((L**2) * w).sum(1) - W * Lbar**2
    chi = syy[:, None] - 2 * slope * sxy + slope**2 * sxx
    return np.maximum(chi, 0.0).sum(0)


def fit_at_b(i: np.ndarray, L: np.ndarray, se: np.ndarray, b: float) -> tuple[float, float, float, float]:
    """c and a2 of the law at a given b (weighted linear least squares, c >= 0) and their standard errors."""
    i, w = np.asarray(i, dtype=float), 1.0 / np.asarray(se, dtype=float) ** 2
    g = 1.0 / (b + i)
    c, a2, _ = (float(v[0]) for v in _two_param(g[None], np.asarray(L, dtype=float), w))
    cov = _inverse(np.array([[g**2 @ w, g @ w], [g @ w, w.sum()]]))
    return c, a2, float(np.sqrt(cov[0, 0])), float(np.sqrt(cov[1, 1]))


def _inverse(F: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.inv(F)
    except np.linalg.LinAlgError:
        return np.full_like(F, np.nan)


# ================================================================================================ stage 2


@dataclass(frozen=True)
class Clock:
    """The training schedule at given checkpoints: progress u = step / total, cumulative learning rate S1 and
    annealing area S2 (Tissue et al. 2024, each normalised to 1 at the end of the run), post-warm-up progress p."""

    steps: np.ndarray
    u: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    p: np.ndarray

    def at(self, idx) -> "Clock":
        return Clock(*(getattr(self, f)[idx] for f in ("steps", "u", "s1", "s2", "p")))


def clock(steps, opt: OptimConfig, momentum: float) -> Clock:
    """S1(s) = Σ_{τ≤s} η_τ and S2(s) = Σ_{τ≤s} m_τ, m_τ = λ m_{τ−1} + (η_{τ−1} − η_τ), in units of the final value
    (warm-up is not annealing: its steps count at the peak rate for S2, so S2 grows once the decay starts)."""
    total = opt.max_steps
    eta = np.array([lr_at(s, opt) for s in range(total)]) / opt.lr
    s1 = np.cumsum(eta)
    ann = np.where(np.arange(total) < opt.warmup_steps, 1.0, eta)
    m = np.zeros_like(ann)
    for t in range(1, total):
        m[t] = momentum * m[t - 1] + (ann[t - 1] - ann[t])
    s2 = np.cumsum(m)
    steps = np.asarray(steps, dtype=int)
    idx = np.clip(steps - 1, 0, total - 1)
    uw = opt.warmup_steps / total
    u = steps / total
    return Clock(steps, u, s1[idx] / s1[-1], s2[idx] / max(s2[-1], 1e-12), np.clip((u - uw) / (1 - uw), 0, 1))


@dataclass(frozen=True)
class FormFit:
    """A fitted temporal form: ``predict(clock)``; the diagnostics every claim checks before resting on it."""

    form: str
    theta: float | None
    coef: tuple
    anchors: tuple  # (x at the first observed point, x at the last) for the anchored forms
    anneal: bool
    converged: bool
    theta_at_bound: bool
    max_corr: float
    n_points: int
    chi2: float = float("nan")  # in-sample χ² against the points' standard errors (NaN without them)
    _basis: object = field(repr=False, compare=False, default=None)
    theta_fixed: bool = False  # θ given, not fitted

    @property
    def n_free(self) -> int:
        return len(self.coef) + (self.theta is not None and not self.theta_fixed)

    @property
    def aic(self) -> float:
        return self.chi2 + 2 * self.n_free

    def predict(self, ck: Clock) -> np.ndarray:
        if not self.converged:
            return np.full(len(ck.u), np.nan)
        return self._basis(ck, self.theta) @ np.asarray(self.coef)

    @property
    def ok(self) -> bool:
        return self.converged and not self.theta_at_bound and self.max_corr <= 0.99

    @property
    def dof(self) -> int:
        return max(1, self.n_points - self.n_free)

    @property
    def chi2_red(self) -> float:
        return self.chi2 / self.dof

    @property
    def fits_its_points(self) -> bool:
        """In-sample goodness of fit: the form misses its own observed points beyond noise when χ² exceeds the
        0.999 quantile of χ²(dof) (a form that cannot follow its prefix has nothing to extrapolate). Without
        standard errors (χ² NaN) there is nothing to test: True."""
        from scipy import stats

        return not np.isfinite(self.chi2) or self.chi2 <= stats.chi2.ppf(0.999, self.dof)


THETA = {"lr_power": (-2.0, 10.0), "power": (-2.0, 10.0), "hyperbolic": (1e-4, 100.0)}  # α up to 10: c saturates within
# the first ~15 % of training, which a power of S1 only follows with α of 3-8


FIXED_THETA = (-1.0, 0.0)  # the power forms' nested members: linear (θ = −1) and logarithmic (θ = 0) in the clock


def _boxcox(x, t):
    """x^-t, shifted and scaled so the limit t -> 0 is -ln x: (x^-t - 1) / t (the Box-Cox family of the power laws,
    which holds the logarithm at t = 0; the anchored forms only use its differences)."""
    return -np.log(x) if abs(t) < 1e-8 else (x ** -t - 1.0) / t


def _basis(form: str, obs: Clock, anneal: bool):
    """(basis(clock, θ) -> (N, k) design matrix, coefficient signs) of a form, anchored at the observed points."""
    if form in ("lr_power", "power"):
        xs = (lambda ck: ck.s1) if form == "lr_power" else (lambda ck: ck.u)
        x0, x1 = float(xs(obs)[0]), float(xs(obs)[-1])

        def basis(ck, t):
            h = (_boxcox(xs(ck), t) - _boxcox(x1, t)) / (_boxcox(x0, t) - _boxcox(x1, t))
            cols = [1.0 - h, h] + ([-ck.s2] if anneal else [])
            return np.stack(cols, axis=1)  # coefficients: (v1, v0[, C])

        return basis, (x0, x1)
    if form == "log":
        return (lambda ck, t: np.stack([np.ones_like(ck.u), np.log(ck.u)], axis=1)), ()
    if form == "hyperbolic":
        return (lambda ck, t: np.stack([np.ones_like(ck.u), 1.0 / (ck.u + t)], axis=1)), ()
    if form == "piecewise_cosine":
        return (lambda ck, t: np.stack([np.ones_like(ck.u), np.cos(np.pi * ck.p)], axis=1)), ()
    if form == "piecewise_cosine_linear":  # the spec's δ2 term: α + β cos(π p) + δ p
        return (lambda ck, t: np.stack([np.ones_like(ck.u), np.cos(np.pi * ck.p), ck.p], axis=1)), ()
    if form == "constant":
        return (lambda ck, t: np.ones((len(ck.u), 1))), ()
    raise ValueError(f"temporal form: unknown {form!r}")


def nonneg_lstsq(A: np.ndarray, y: np.ndarray, nonneg: list[bool]) -> np.ndarray:
    """min ||A x − y||² with x_j >= 0 where ``nonneg[j]``, for the two or three columns of a temporal form: every
    subset of the bounded coefficients is pinned at 0 in turn and the rest solved freely; the best feasible solution
    is the optimum (the constrained optimum is one of these candidates, since it solves the free problem on the
    coefficients off their bound). Exact, and ~50x faster than a general solver at this size."""
    bounded = [j for j, b in enumerate(nonneg) if b]
    best, best_rss = None, np.inf
    for mask in range(1 << len(bounded)):
        pinned = {bounded[k] for k in range(len(bounded)) if mask >> k & 1}
        free = [j for j in range(A.shape[1]) if j not in pinned]
        x = np.zeros(A.shape[1])
        if free:
            x[free] = np.linalg.lstsq(A[:, free], y, rcond=None)[0]
        if any(x[j] < 0 for j in bounded if j not in pinned):
            continue
        rss = float(np.sum((A @ x - y) ** 2))
        if rss < best_rss:
            best, best_rss = x, rss
    return best


def total_noise(y: np.ndarray, se: np.ndarray) -> np.ndarray:
    """The noise of a trajectory over checkpoints: the evaluation error ``se`` (from the windows) combined with the
    training jitter, the checkpoint-to-checkpoint wobble of SGD that no smooth law follows and the windows cannot
    see. The jitter is estimated from the second differences of the points (for white noise around a smooth trend,
    var(y[k+1] − 2 y[k] + y[k−1]) = 6 σ², while a smooth trend's second differences are small on dense checkpoints),
    with the evaluation part removed; at least 5 points, else ``se`` alone."""
    y, se = np.asarray(y, dtype=float), np.asarray(se, dtype=float)
    if len(y) < 5 or not np.all(np.isfinite(y)):
        return se
    jitter2 = max(float(np.mean(np.diff(y, 2) ** 2)) / 6.0 - float(np.mean(se**2)), 0.0)
    return np.sqrt(se**2 + jitter2)


def fit_form(form: str, obs: Clock, y: np.ndarray, se: np.ndarray | None = None, *, decreasing: bool = False,
             anneal: bool = False, theta: float | None = None) -> FormFit:
    """Weighted least squares of a temporal form on the observed points (``obs``, ``y``, standard errors ``se``,
    widened by the training jitter: :func:`total_noise`): linear coefficients solved exactly for each shape θ (with ``decreasing``: v0 >= v1 and C >= 0, as a loss that
    falls with learning), θ profiled over its bounded range and refined."""
    y = np.asarray(y, dtype=float)
    w = 1.0 / total_noise(y, se) ** 2 if se is not None else np.ones_like(y)
    if not np.all(np.isfinite(y)) or not np.all(np.isfinite(w)) or len(y) < 3:
        return FormFit(form, None, (), (), anneal, False, False, float("nan"), len(y))
    anneal = anneal and form == "lr_power"
    basis, anchors = _basis(form, obs, anneal)
    sw = np.sqrt(w)

    def solve(t):
        X = basis(obs, t)
        if not np.all(np.isfinite(X)):
            return None, np.inf
        if form in ("lr_power", "power") and decreasing:
            # v1 free, d = v0 - v1 >= 0, C >= 0: reparametrised columns so the bounds are plain non-negativity
            A = np.stack([X[:, 0] + X[:, 1], X[:, 1]] + ([X[:, 2]] if anneal else []), axis=1)
            x = nonneg_lstsq(A * sw[:, None], y * sw, [False, True] + ([True] if anneal else []))
            coef = np.array([x[0], x[0] + x[1], *x[2:]])
        elif anneal:
            coef = nonneg_lstsq(X * sw[:, None], y * sw, [False, False, True])
        else:
            coef = np.linalg.lstsq(X * sw[:, None], y * sw, rcond=None)[0]
        return coef, float((((X @ coef) - y) ** 2) @ w)

    fixed = theta is not None and form in THETA  # a shape given, not fitted (the nested members of the family)
    if fixed:
        at_bound = False
    elif form in THETA:
        lo, hi = THETA[form]
        grid = np.linspace(lo, hi, 31) if lo < 0 else np.geomspace(lo, hi, 24)  # then refined between neighbours
        chis = [solve(t)[1] for t in grid]
        k = int(np.argmin(chis))
        a, z = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
        res = optimize.minimize_scalar(lambda t: solve(t)[1], bounds=(a, z), method="bounded",
                                       options={"xatol": 1e-8})
        theta = float(res.x) if res.fun <= chis[k] else float(grid[k])
        at_bound = theta <= lo + 1e-3 * (hi - lo) or theta >= hi - 1e-3 * (hi - lo) if lo < 0 else \
            theta <= lo * 1.01 or theta >= hi * 0.99
    else:
        theta, at_bound = None, False
    coef, chi = solve(theta)
    if coef is None or not np.isfinite(chi):
        return FormFit(form, theta, (), anchors, anneal, False, at_bound, float("nan"), len(y))
    return FormFit(form, theta, tuple(float(v) for v in coef), anchors, anneal, True, at_bound,
                   _max_corr(basis, obs, theta, coef, w, shape_free=not fixed), len(y),
                   chi if se is not None else float("nan"), basis, fixed)


def _max_corr(basis, obs: Clock, theta, coef, w, shape_free: bool = True) -> float:
    """Largest |correlation| between the free parameters (coefficients and θ) from the Fisher matrix; a
    coefficient pinned at its bound (C = 0) is not free."""
    cols = [basis(obs, theta)[:, j] for j in range(len(coef))]
    if theta is not None and shape_free:
        h = 1e-6 * max(abs(theta), 1e-3)
        cols.append((basis(obs, theta + h) @ coef - basis(obs, theta - h) @ coef) / (2 * h))
    J = np.stack(cols, axis=1)
    free = [j for j in range(J.shape[1]) if np.any(J[:, j] != 0)]
    J = J[:, free]
    if J.shape[1] < 2:
        return 0.0
    cov = _inverse(J.T @ (J * w[:, None]))
    sd = np.sqrt(np.abs(np.diag(cov)))
    if not np.all(np.isfinite(sd)) or np.any(sd == 0):
        return 1.0
    corr = np.abs(cov / np.outer(sd, sd))
    np.fill_diagonal(corr, 0.0)
    return float(corr.max())


def spec_a2(obs: Clock, y: np.ndarray, se: np.ndarray | None = None) -> FormFit:
    """The spec's a2 form (§3.3): the piecewise cosine with δ2 = 0 first, the linear term δ2 kept only when that fit
    passes its checks (over a run's decay, cos(π p) and p are nearly collinear) and improves the fit by AIC (χ² + 2k, against ``se``; unweighted, the residual sum of squares n·ln(RSS/n) + 2k)."""
    fits = [fit_form(f, obs, y, se) for f in ("piecewise_cosine", "piecewise_cosine_linear")]
    if not fits[1].ok:  # δ2 not identifiable beside the cosine (|corr| > 0.99): no improvement to keep
        return fits[0]

    def aic(f):
        if se is not None:
            return f.chi2 + 2 * len(f.coef)
        rss = float(np.sum((f.predict(obs) - np.asarray(y)) ** 2))
        return len(y) * np.log(max(rss, 1e-300) / len(y)) + 2 * len(f.coef)

    return fits[1] if aic(fits[1]) < aic(fits[0]) else fits[0]


# ============================================================================================ re-weighting


class PositionWeightedLM(CausalLM):
    """Loss re-weighted by position (v1's re-weighting experiment):  L = mean_{b,i} w_i * nll_{b,i},
    w_i = Lbar_i^γ / mean_j Lbar_j^γ with Lbar_i the batch's (detached) mean loss at position i. γ = 0 is the
    ordinary loss exactly."""

    def __init__(self, model, optim, gamma: float = 0.0):
        super().__init__(model, optim)
        self.gamma = gamma

    def training_step(self, batch_BT1, batch_idx):
        x, y = batch_BT1[:, :-1], batch_BT1[:, 1:]
        nll_BT = per_token_nll(self.model(x).logits, y)
        w_T = nll_BT.detach().mean(0).clamp_min(1e-6) ** self.gamma
        loss = (nll_BT * (w_T / w_T.mean())).mean()
        self.log("train_loss", nll_BT.mean())
        return loss
