"""What the Temporal Scaling Law contributes, beside the spec (``../shared/papers/temporal_scaling_law.md`` §3).

- the dynamic hyperbolic law of the per-position loss at one checkpoint, its closed-form mean over positions and
  its bounded least-squares fit (stage 1, §3.2);
- the candidate temporal forms of each parameter over training progress u = N / N_T and their fits (stage 2, §3.3);
- the position-weighted loss of the v1 re-weighting experiment (§3.6).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import optimize, special

from replicate.models.lm import CausalLM, per_token_nll
from replicate.papers.temporal_scaling_law import FORMS

MAX_NFEV = 300  # function evaluations per temporal / whole-loss fit: converged fits need far fewer; fits of
#                 degenerate (smoke-sized) data stop here instead of spending seconds on a hopeless search


def hyperbolic_law(i, a0, a1, a2):
    """Dynamic hyperbolic law, per checkpoint:  L_i = a0 / (1 + a1 i) + a2."""
    return a0 / (1.0 + a1 * i) + a2


def mean_hyperbolic(n: int, a0, a1, a2, start: int = 1):
    """(1/n) Σ_{i=start}^{start+n-1} L_i in closed form:  Σ 1/(1 + a1 i) = (ψ(m + 1/a1) − ψ(start + 1/a1)) / a1 with
    m = start + n (digamma identity), so L(N) = a2 + a0 / (n a1) * (ψ(start + n + 1/a1) − ψ(start + 1/a1))."""
    a1 = np.asarray(a1, dtype=float)
    return a2 + a0 / (n * a1) * (special.digamma(start + n + 1 / a1) - special.digamma(start + 1 / a1))


def r2(y, yhat) -> float:
    """Coefficient of determination (NaN for a constant ``y``)."""
    ss = float(np.sum((y - np.mean(y)) ** 2))
    return 1.0 - float(np.sum((y - yhat) ** 2)) / ss if ss > 0 else float("nan")


def fit_positions(i: np.ndarray, L: np.ndarray, se: np.ndarray | None = None, p0=None) -> dict:
    """Stage 1: fit (a0, a1, a2) > 0 to the position-wise mean losses by bounded least squares (TRF).

    Initial guess (spec §3.2): a2 = mean of the last 10 % of positions, a0 = L_1 − a2, a1 = 1 / (the i where the
    gap first halves). Returns the parameters, R² over positions, the reduced χ² against the per-position standard
    errors ``se`` (≈ 1 when the law fits to within evaluation noise) and corr(a0, a1) from the covariance."""
    if p0 is None:
        a2 = float(np.mean(L[-max(1, len(L) // 10):]))
        gap = L - a2
        a0 = max(float(gap[0]), 1e-3)
        half = np.flatnonzero(gap <= gap[0] / 2)
        a1 = 1.0 / float(i[half[0]] if len(half) and i[half[0]] > 0 else i[len(i) // 2] + 1)
        p0 = (a0, a1, max(a2, 1e-3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optimize.OptimizeWarning)
        try:
            popt, pcov = optimize.curve_fit(hyperbolic_law, i, L, p0=p0, bounds=(1e-8, np.inf), method="trf",
                                            max_nfev=2000)
        except (RuntimeError, ValueError):
            popt, pcov = np.full(3, np.nan), np.full((3, 3), np.nan)
    yhat = hyperbolic_law(i, *popt)
    sd = np.sqrt(np.diag(pcov)) if np.all(np.isfinite(pcov)) else np.full(3, np.nan)
    corr = float(pcov[0, 1] / (sd[0] * sd[1])) if np.all(sd[:2] > 0) else float("nan")
    chi2 = float(np.mean(((L - yhat) / se) ** 2) * len(L) / max(1, len(L) - 3)) if se is not None else float("nan")
    return {"a0": popt[0], "a1": popt[1], "a2": popt[2], "r2": r2(L, yhat), "chi2_red": chi2, "corr_a0_a1": corr}


# Temporal forms f(u; θ) of progress u = N / N_T ∈ (0, 1]; ``uw`` is the end of warm-up as a fraction of N_T.
def progress(u, uw):
    """Post-warm-up progress p = (u − u_w) / (1 − u_w), clipped to [0, 1] (the cosine schedule's own clock)."""
    return np.clip((u - uw) / (1.0 - uw), 0.0, 1.0)


def temporal_form(name: str, uw: float, linear: bool = False):
    """(f, p0, bounds) for one candidate temporal form (spec §3.3)."""
    if name == "log":  # α + β ln u
        return (lambda u, a, b: a + b * np.log(u)), (1.0, 0.0), (-np.inf, np.inf)
    if name == "hyperbolic":  # α + β / (u + γ),  γ > 0
        return (lambda u, a, b, g: a + b / (u + g)), (1.0, 0.1, 0.1), ([-np.inf, -np.inf, 1e-6], np.inf)
    if name == "piecewise_cosine":  # α + β cos(π p) [+ δ p],  p = (u − u_w)/(1 − u_w) after warm-up
        if linear:
            return (lambda u, a, b, d: a + b * np.cos(np.pi * progress(u, uw)) + d * progress(u, uw)), \
                (1.0, 0.1, 0.0), (-np.inf, np.inf)
        return (lambda u, a, b: a + b * np.cos(np.pi * progress(u, uw))), (1.0, 0.1), (-np.inf, np.inf)
    if name == "power":  # E + A u^-α  (TSL-power, ours)
        return (lambda u, e, a, al: e + a * u ** (-al)), (1.0, 0.1, 0.5), ([-np.inf, -np.inf, 0.0], [np.inf, np.inf, 5])
    raise ValueError(f"temporal form: unknown {name!r}; allowed: {', '.join(FORMS)}")


def fit_form(name: str, u, y, uw: float, linear: bool = False):
    """Least-squares fit of a temporal form; returns a callable predictor (NaN everywhere if every start fails).
    Nonlinear forms are fitted from several starting points (the last constant on a log grid) and the best kept."""
    f, p0, bounds = temporal_form(name, uw, linear)
    starts = [(float(np.mean(y)), *p0[1:])]
    if name in ("hyperbolic", "power"):
        starts = [(float(np.mean(y)), *p0[1:-1], g) for g in (0.01, 0.1, 0.5, 2.0)]
    best, best_sse = None, np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for start in starts:
            try:
                popt, _ = optimize.curve_fit(f, u, y, p0=start, bounds=bounds, method="trf", max_nfev=MAX_NFEV)
            except (RuntimeError, ValueError, TypeError):
                continue
            sse = float(np.sum((f(u, *popt) - y) ** 2))
            if sse < best_sse:
                best, best_sse = popt, sse
    if best is None:
        return lambda x: np.full(np.shape(x), np.nan)
    return lambda x: f(np.asarray(x, dtype=float), *best)


def tsl_loss(n_positions: int, a0, a1, a2, start: int = 1):
    """The temporal law's prediction of the whole loss L(N) from its (extrapolated) parameters: the closed-form
    mean of the hyperbolic law over the n positions (a1 floored at 1e-8 so a form extrapolated below zero stays
    defined)."""
    return mean_hyperbolic(n_positions, a0, np.clip(a1, 1e-8, None), a2, start=start)


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
