"""The Temporal Scaling Law's experiments, as one plan (``run_experiments(cfg)`` -> the bundle ``report.py`` reads).

Steps, in order (the notebook runs one per cell):

- ``data``: a byte-level BPE over the training split of the plays and of the stdlib source; token streams; fixed
  evaluation windows: ID = held-out plays, OOD = the Python language reference (English of another domain, the
  same vocabulary), E3's blend = half held-out plays, half held-out stdlib modules.
- ``e1``: the studied model, per-position loss on ID and OOD at every scheduled checkpoint.
- ``mixtures`` (E3): one short run per code fraction r, evaluated on the blend.
- ``reweighting``: E1's recipe trained with w_i ∝ L_i^γ (paper scale; on at smoke to test the path).
- ``fits``, ``positions``: stage-1 fits per (set, checkpoint) and the tidy per-position losses.
- ``forms``, ``form_curves``: every candidate temporal form fitted to every parameter; the configured forms'
  fitted curves on the main prefix (fig2 draws them, it fits nothing).
- ``predictions``, ``bootstrap``: predicted vs actual L(N) per set, fit fraction and method; the paired bootstrap
  over evaluation windows of the claims' methods.
- ``mixture_selection``, ``uniformity``, ``reweight_gains``: E3's picks; the v1 relative-improvement profile and
  its bootstrap; the re-weighting gain and its bootstrap.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import optimize

from replicate.data import corpora, lm, tokenizer
from replicate.experiments import Plan
from replicate.models.lm import OptimConfig, lr_at
from replicate.models.trainer import TrainSpec, train
from replicate.papers.temporal_scaling_law import FORMS, PAPER_ID, TSLConfig
from replicate.papers.temporal_scaling_law.method import (
    MAX_NFEV,
    PositionWeightedLM,
    fit_form,
    fit_positions,
    r2,
    tsl_loss,
)

VARIANT = "TSL, c=a0/a1 & b=1/a1 (ours)"
CLAIM_METHODS = ("TSL", "E + A·N^-α", "LR-annealing law (Tissue et al.)")  # what the claims compare

plan = Plan(PAPER_ID)


# ==================================================================================================== data


@dataclass(frozen=True)
class Data:
    tok: object
    shakespeare_train: np.ndarray
    code_train: np.ndarray
    eval_sets: dict  # E1, (W, n+1) windows: "id" (held-out plays), "ood" (the Python reference, English prose)
    mix_eval: dict  # E3, (W, n_mix+1) windows: "blend", half held-out plays and half held-out stdlib modules
    description: str
    sizes: dict  # what the notebook's prose reports: documents, bytes and tokens of each split


@plan.step
def data(cfg: TSLConfig) -> Data:
    """Tokenizer trained on the training split of both corpora (plays and stdlib code); token streams; fixed
    evaluation windows. E1's OOD set is English of another domain (the Python language reference), so it shares the
    vocabulary E1 trains on; code, whose tokens E1 never sees, is the second domain of E3's mixtures instead."""
    sh_tr, sh_ho = corpora.split(corpora.load(cfg.id_corpus))
    py_tr, py_ho = corpora.split(corpora.python_stdlib(cfg.code_max_bytes))
    docs = corpora.python_docs()
    tok = tokenizer.train_bpe(sh_tr + py_tr, cfg.vocab_size, name="shakespeare+python")
    enc = lambda d: tokenizer.encode_documents(tok, d)
    half = cfg.eval_windows // 2
    blend = torch.cat([lm.eval_windows(enc(sh_ho), half, cfg.mix_seq_len),
                       lm.eval_windows(enc(py_ho), half, cfg.mix_seq_len)])
    streams = {"id": lm.join(enc(sh_tr)), "code": lm.join(enc(py_tr))}
    nbytes = lambda ds: sum(len(d.text.encode("utf-8")) for d in ds)
    sizes = {"id_train_docs": len(sh_tr), "id_heldout_docs": len(sh_ho), "id_train_bytes": nbytes(sh_tr),
             "id_train_tokens": len(streams["id"]), "code_train_docs": len(py_tr), "code_train_tokens":
             len(streams["code"]), "ood_docs": len(docs), "ood_bytes": nbytes(docs)}
    return Data(
        tok=tok, shakespeare_train=streams["id"], code_train=streams["code"],
        eval_sets={"id": lm.eval_windows(enc(sh_ho), cfg.eval_windows, cfg.seq_len),
                   "ood": lm.eval_windows(enc(docs), cfg.eval_windows, cfg.seq_len)},
        mix_eval={"blend": blend},
        description=f"tok=bpe{cfg.vocab_size}:{tokenizer.tokenizer_fingerprint(tok)};"
                    f"id={corpora.fingerprint(sh_tr)};code={corpora.fingerprint(py_tr)};ood={corpora.fingerprint(docs)}",
        sizes=sizes,
    )


def checkpoint_schedule(total: int, n: int, first: int = 1) -> tuple[int, ...]:
    """``n`` evaluation steps: a third log-spaced from ``first`` to 10 % of training, the rest uniform to the end."""
    n_log = max(2, n // 3)
    early = np.geomspace(max(1, first), max(2, 0.1 * total), n_log)
    late = np.linspace(0.1 * total, total, n - n_log + 1)[1:]
    steps = sorted({int(round(s)) for s in np.concatenate([early, late])} | {total})
    return tuple(s for s in steps if 1 <= s <= total)


@dataclass(frozen=True)
class Horizon:
    """The training schedule the laws need: total steps, tokens per step, warm-up, optimiser."""

    total_steps: int
    tokens_per_step: int
    opt: OptimConfig

    @property
    def uw(self) -> float:
        return self.opt.warmup_steps / self.total_steps


def e1_horizon(cfg: TSLConfig) -> Horizon:
    return Horizon(cfg.steps, cfg.batch_size * cfg.seq_len, cfg.optim(cfg.steps))


def mix_horizon(cfg: TSLConfig) -> Horizon:
    return Horizon(cfg.mix_steps, cfg.batch_size * cfg.mix_seq_len, cfg.optim(cfg.mix_steps, prefix="mix_"))


# ============================================================================================ training runs


def e1_spec(cfg: TSLConfig, data: Data, gamma: float = 0.0) -> TrainSpec:
    opt = cfg.optim(cfg.steps)
    return TrainSpec(cfg.decoder(cfg.vocab_size), opt, data.description + (f";gamma={gamma}" if gamma else ""),
                     cfg.batch_size, cfg.seq_len, cfg.seed,
                     eval_steps=checkpoint_schedule(cfg.steps, cfg.n_checkpoints, opt.warmup_steps),
                     ckpt_every=max(10, cfg.steps // 20))


def e1_batches(cfg: TSLConfig, data: Data) -> lm.Batches:
    return lm.Batches((lm.Stream(data.shakespeare_train),), (1.0,), cfg.batch_size, cfg.seq_len, cfg.seed)


@plan.step
def e1(cfg: TSLConfig, data: Data) -> dict:
    """E1: train the model, evaluating per-position loss on ID and OOD windows at every scheduled checkpoint."""
    return train(PAPER_ID, e1_spec(cfg, data), e1_batches(cfg, data), data.eval_sets, **cfg.trainer_kwargs())


@plan.step
def mixtures(cfg: TSLConfig, data: Data) -> dict[float, dict]:
    """E3: one short run per code fraction r; evaluation on the 50/50 blend of held-out plays and code."""
    out = {}
    for r in cfg.mixture_code_fractions:
        opt = cfg.optim(cfg.mix_steps, prefix="mix_")
        spec = TrainSpec(cfg.decoder(cfg.vocab_size, prefix="mix_"), opt, data.description + f";mix_code={r}",
                         cfg.batch_size, cfg.mix_seq_len, cfg.seed,
                         eval_steps=checkpoint_schedule(cfg.mix_steps, cfg.mix_n_checkpoints, opt.warmup_steps),
                         ckpt_every=max(10, cfg.mix_steps // 10))
        batches = lm.Batches((lm.Stream(data.shakespeare_train), lm.Stream(data.code_train)), (1 - r, r),
                             cfg.batch_size, cfg.mix_seq_len, cfg.seed)
        out[r] = train(PAPER_ID, spec, batches, data.mix_eval, **cfg.trainer_kwargs())
    return out


@plan.step
def reweighting(cfg: TSLConfig, data: Data, e1: dict) -> dict[float, dict]:
    """Position re-weighting: E1's model and data trained with w_i ∝ L_i^γ; γ = 0 is E1 itself. Empty unless
    ``run_reweighting``."""
    if not cfg.run_reweighting:
        return {}
    out = {0.0: e1}
    for g in cfg.reweight_gammas:
        spec = dataclasses.replace(e1_spec(cfg, data, gamma=g), eval_steps=())
        out[g] = train(PAPER_ID, spec, e1_batches(cfg, data), {"id": data.eval_sets["id"]},
                       module=lambda spec=spec, g=g: PositionWeightedLM(spec.model, spec.optim, gamma=g),
                       **cfg.trainer_kwargs())
    return out


# ---------------------------------------------------------------------------------------- whole-loss baselines


def lr_areas(steps: np.ndarray, opt: OptimConfig, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Tissue et al. (2024): S1(s) = Σ_{τ≤s} η_τ (forward area) and S2(s) = Σ_{τ≤s} m_τ with
    m_τ = λ m_{τ−1} + (η_{τ−1} − η_τ) (annealing area), in units of the peak learning rate. Warm-up is not
    annealing: for S2 the warm-up steps count at the peak rate, so S2 starts growing when the decay starts."""
    total = int(max(steps))
    eta = np.array([lr_at(s, opt) for s in range(total + 1)]) / opt.lr
    s1 = np.cumsum(eta)
    eta_anneal = np.where(np.arange(total + 1) < opt.warmup_steps, 1.0, eta)
    m = np.zeros_like(eta)
    for t in range(1, len(eta)):
        m[t] = lam * m[t - 1] + (eta_anneal[t - 1] - eta_anneal[t])
    s2 = np.cumsum(m)
    idx = np.asarray(steps, dtype=int) - 1
    return s1[idx], s2[idx]


def fit_baseline(name: str, u, L, s1=None, s2=None):
    """Whole-loss baselines fitted on the observed prefix; each returns a predictor of L at progress u (or at the
    matching LR areas for the annealing law)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if name == "power_irreducible":  # L = E + A u^-α
                f = lambda x, e, a, al: e + a * x ** (-al)
                p, _ = optimize.curve_fit(f, u, L, p0=(L.min() * 0.9, 0.1, 0.5), bounds=([0, 0, 0], [np.inf, np.inf, 5]),
                                          method="trf", max_nfev=MAX_NFEV)
                return lambda x, *_: f(np.asarray(x), *p)
            if name == "power_pure":  # L = (u_c / u)^α  ⇔  ln L = α ln u_c − α ln u
                slope, icpt = np.polyfit(np.log(u), np.log(L), 1)
                return lambda x, *_: np.exp(icpt + slope * np.log(np.asarray(x)))
            if name == "lr_annealing":  # L = L0 + A S1^-α − C S2
                f = lambda X, l0, a, al, c: l0 + a * X[0] ** (-al) - c * X[1]
                p, _ = optimize.curve_fit(f, np.vstack([s1, s2]), L, p0=(L.min() * 0.9, 1.0, 0.5, 0.01),
                                          bounds=([0, 0, 0, 0], [np.inf, np.inf, 5, np.inf]), method="trf",
                                          max_nfev=MAX_NFEV)
                return lambda x, S1, S2: f(np.vstack([S1, S2]), *p)
        except (RuntimeError, ValueError, TypeError):
            pass
    if name not in ("power_irreducible", "power_pure", "lr_annealing"):
        raise ValueError(f"baseline: unknown {name!r}")
    return lambda x, *_: np.full(np.shape(x), np.nan)


# =================================================================================================== analysis


def position_index(cfg: TSLConfig, n: int) -> np.ndarray:
    return np.arange(n, dtype=float) + cfg.position_start


def curves(evals: dict, idx: np.ndarray | None = None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """step -> (mean per-position loss, its standard error) over the windows ``idx`` (all by default)."""
    out = {}
    for step, m in sorted(evals.items()):
        m = m.numpy() if isinstance(m, torch.Tensor) else m
        m = m if idx is None else m[idx]
        out[step] = (m.mean(0), m.std(0, ddof=1) / np.sqrt(len(m)))
    return out


def stage1(cfg: TSLConfig, curves_by_step: dict, p0_by_step: dict | None = None) -> pd.DataFrame:
    rows = []
    for step, (L, se) in curves_by_step.items():
        i = position_index(cfg, len(L))
        fit = fit_positions(i, L, se, p0=None if p0_by_step is None else p0_by_step.get(step))
        rows.append({"step": step, "loss": float(L.mean()), **fit})
    return pd.DataFrame(rows)


def predict(cfg: TSLConfig, s1df: pd.DataFrame, horizon: Horizon, fit_frac: float, n_positions: int,
            forms: dict | None = None, only: tuple | None = None) -> dict[str, np.ndarray]:
    """Predicted L(N) at every checkpoint for each method, fitted on checkpoints with step <= fit_frac * total
    (and after ``drop_before_frac``). Methods: TSL (configured forms), TSL-power, TSL in the identifiable
    parametrisation, and the whole-loss baselines; ``only`` restricts to some of them (the bootstrap's)."""
    forms = forms or {"a0": cfg.a0_form, "a1": cfg.a1_form, "a2": cfg.a2_form}
    want = lambda m: only is None or m in only
    steps = s1df["step"].to_numpy()
    u = steps / horizon.total_steps
    obs = (u <= fit_frac + 1e-9) & (u >= cfg.drop_before_frac)
    L = s1df["loss"].to_numpy()
    fit = lambda form, y: fit_form(form, u[obs], y[obs], horizon.uw, cfg.cosine_linear_term)(u)
    out = {}
    for method, fm in (("TSL", forms), ("TSL-power (ours)", dict.fromkeys(("a0", "a1", "a2"), "power"))):
        if want(method):
            a = {k: fit(fm[k], s1df[k].to_numpy()) for k in ("a0", "a1", "a2")}
            out[method] = tsl_loss(n_positions, a["a0"], a["a1"], a["a2"], start=cfg.position_start)
    if want(VARIANT):
        # Ours: the same law in its identifiable parametrisation L_i = c / (b + i) + a2, c = a0/a1, b = 1/a1 (spec
        # §8: a0 and a1 are individually ill-determined when a1·i >> 1; c and b are not). Same forms on (c, b, a2).
        c = fit(forms["a0"], s1df["a0"].to_numpy() / s1df["a1"].to_numpy())
        b = np.clip(fit(forms["a1"], 1.0 / s1df["a1"].to_numpy()), 1e-8, None)
        out[VARIANT] = tsl_loss(n_positions, c / b, 1.0 / b, fit(forms["a2"], s1df["a2"].to_numpy()),
                                start=cfg.position_start)
    s1, s2 = lr_areas(steps, horizon.opt, cfg.tissue_lambda)
    for name, label in (("power_irreducible", "E + A·N^-α"), ("power_pure", "(N_c/N)^α"),
                        ("lr_annealing", "LR-annealing law (Tissue et al.)")):
        if want(label):
            out[label] = fit_baseline(name, u[obs], L[obs], s1[obs], s2[obs])(u, s1, s2)
    if want("cosine form on L(N) (ablation)"):
        out["cosine form on L(N) (ablation)"] = fit("piecewise_cosine", L)
    return out


def scores(actual: np.ndarray, pred: np.ndarray) -> dict:
    ok = np.isfinite(pred)
    if not ok.all():
        return {"r2": float("nan"), "mse": float("nan"), "mae": float("nan"), "mape": float("nan"),
                "max_rel_err": float("nan")}
    rel = np.abs(pred - actual) / actual
    return {"r2": r2(actual, pred), "mse": float(np.mean((pred - actual) ** 2)),
            "mae": float(np.mean(np.abs(pred - actual))), "mape": float(np.mean(rel)), "max_rel_err": float(rel.max())}


def post_warmup(cfg: TSLConfig, df: pd.DataFrame, total: int) -> pd.DataFrame:
    return df[df["step"] / total >= cfg.drop_before_frac]


@plan.step
def positions(cfg: TSLConfig, e1: dict) -> pd.DataFrame:
    """Tidy per-position losses of E1: set, step, tokens, position, loss, se."""
    h = e1_horizon(cfg)
    rows = []
    for name, ev in e1["evals"].items():
        for step, (L, se) in curves(ev).items():
            i = position_index(cfg, len(L))
            rows.append(pd.DataFrame({"set": name, "step": step, "tokens": step * h.tokens_per_step, "position": i,
                                      "loss": L, "se": se}))
    return pd.concat(rows, ignore_index=True)


@plan.step
def fits(cfg: TSLConfig, e1: dict) -> pd.DataFrame:
    """Stage-1 fits of E1: one row per (set, checkpoint)."""
    h = e1_horizon(cfg)
    out = []
    for name, ev in e1["evals"].items():
        df = stage1(cfg, curves(ev))
        df.insert(0, "set", name)
        df.insert(2, "tokens", df["step"] * h.tokens_per_step)
        df["post_warmup"] = df["step"] / h.total_steps >= cfg.drop_before_frac
        out.append(df)
    return pd.concat(out, ignore_index=True)


@plan.step
def forms(cfg: TSLConfig, fits: pd.DataFrame) -> pd.DataFrame:
    """Every candidate form fitted to every parameter: R² over all post-warm-up checkpoints (shape), and the
    MSE of extrapolation from the main fit fraction (prediction)."""
    h = e1_horizon(cfg)
    rows = []
    for name, df in fits.groupby("set", sort=False):
        df = post_warmup(cfg, df.sort_values("step"), h.total_steps)
        u = df["step"].to_numpy() / h.total_steps
        obs = u <= cfg.main_fit_fraction + 1e-9
        for p in ("a0", "a1", "a2"):
            y = df[p].to_numpy()
            for form in FORMS:
                full = fit_form(form, u, y, h.uw, cfg.cosine_linear_term)(u)
                ext = fit_form(form, u[obs], y[obs], h.uw, cfg.cosine_linear_term)(u[~obs])
                rows.append({"set": name, "parameter": p, "form": form, "r2_full": r2(y, full),
                             "extrapolation_mse": float(np.mean((ext - y[~obs]) ** 2)) if (~obs).any() else np.nan,
                             "spec_form": form == {"a0": cfg.a0_form, "a1": cfg.a1_form, "a2": cfg.a2_form}[p]})
    return pd.DataFrame(rows)


@plan.step
def form_curves(cfg: TSLConfig, fits: pd.DataFrame) -> pd.DataFrame:
    """The configured temporal form of each parameter fitted on the main prefix (post warm-up), evaluated on a grid
    of progress from the first post-warm-up checkpoint to the end: what fig2 draws over the per-checkpoint fits."""
    h = e1_horizon(cfg)
    forms_ = {"a0": cfg.a0_form, "a1": cfg.a1_form, "a2": cfg.a2_form}
    rows = []
    for name, df in fits.groupby("set", sort=False):
        d = post_warmup(cfg, df.sort_values("step"), h.total_steps)
        u = d["step"].to_numpy() / h.total_steps
        obs = u <= cfg.main_fit_fraction + 1e-9
        uu = np.linspace(u.min(), 1, 200)
        for p, form in forms_.items():
            f = fit_form(form, u[obs], d[p].to_numpy()[obs], h.uw, cfg.cosine_linear_term)
            rows.append(pd.DataFrame({"set": name, "parameter": p, "form": form, "progress": uu,
                                      "tokens": uu * h.total_steps * h.tokens_per_step, "value": f(uu),
                                      "fitted_range": uu <= cfg.main_fit_fraction}))
    return pd.concat(rows, ignore_index=True)


@plan.step
def predictions(cfg: TSLConfig, fits: pd.DataFrame) -> pd.DataFrame:
    """Predicted vs actual L(N) for every set, fit fraction, method and checkpoint."""
    h = e1_horizon(cfg)
    rows = []
    for name, df in fits.groupby("set", sort=False):
        df = df.sort_values("step")
        for frac in cfg.fit_fractions:
            for method, pred in predict(cfg, df, h, frac, cfg.seq_len).items():
                rows.append(pd.DataFrame({"set": name, "fit_fraction": frac, "method": method, "step": df["step"],
                                          "tokens": df["tokens"], "actual": df["loss"], "predicted": pred,
                                          "future": df["step"] / h.total_steps > frac + 1e-9}))
    return pd.concat(rows, ignore_index=True)


@plan.step
def bootstrap(cfg: TSLConfig, e1: dict, fits: pd.DataFrame) -> pd.DataFrame:
    """Paired bootstrap over evaluation windows of the main-fraction prediction scores: every resample refits stage 1
    (warm-started at the point estimate) and every method. One row per (set, resample, method)."""
    h = e1_horizon(cfg)
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for name, ev in e1["evals"].items():
        point = fits[fits["set"] == name].set_index("step")
        p0 = {s: tuple(point.loc[s, ["a0", "a1", "a2"]]) for s in point.index}
        W = next(iter(ev.values())).shape[0]
        for b in range(cfg.n_boot):
            idx = rng.integers(0, W, W)
            df = stage1(cfg, curves(ev, idx), p0).sort_values("step")
            fut = (df["step"] / h.total_steps > cfg.main_fit_fraction + 1e-9).to_numpy()
            for method, pred in predict(cfg, df, h, cfg.main_fit_fraction, cfg.seq_len, only=CLAIM_METHODS).items():
                rows.append({"set": name, "boot": b, "method": method,
                             **scores(df["loss"].to_numpy()[fut], pred[fut])})
    return pd.DataFrame(rows)


@plan.step
def mixture_selection(cfg: TSLConfig, mixtures: dict) -> pd.DataFrame:
    """E3: per candidate r, TSL's and the baselines' predicted final loss from the prefix, and the actual."""
    h = mix_horizon(cfg)
    rows = []
    for r, res in mixtures.items():
        df = stage1(cfg, curves(res["evals"]["blend"])).sort_values("step")
        pred = predict(cfg, df, h, cfg.main_fit_fraction, cfg.mix_seq_len)
        obs = df["step"] / h.total_steps <= cfg.main_fit_fraction + 1e-9
        final = res["final"]["blend"].numpy()
        rows.append({"code_fraction": r, "predicted_TSL": float(pred["TSL"][-1]),
                     "predicted_power_law": float(pred["E + A·N^-α"][-1]),
                     "prefix_loss": float(df["loss"][obs].iloc[-1]), "actual_final": float(final.mean()),
                     "actual_final_se": float(final.mean(1).std(ddof=1) / np.sqrt(len(final)))})
    return pd.DataFrame(rows)


def relative_improvement(cfg: TSLConfig, ev: dict, idx=None) -> tuple[pd.DataFrame, float]:
    """v1 insight: relative improvement r_i = (L_i(N_a) − L_i(N_b)) / L_i(N_a) between the first post-warm-up
    checkpoint a and the last b, per position (ID). Returns the frame and the normalised slope
    d r / d ln i × ln(n) / mean(r): the relative change of r across the whole position range (0 = uniform)."""
    h = e1_horizon(cfg)
    steps = [s for s in sorted(ev) if s / h.total_steps >= cfg.drop_before_frac]
    a, b = steps[0], steps[-1]
    La, Lb = curves({a: ev[a]}, idx)[a][0], curves({b: ev[b]}, idx)[b][0]
    r = (La - Lb) / La
    i = position_index(cfg, len(r))
    x = np.log(i + (1 - cfg.position_start))
    slope = np.polyfit(x, r, 1)[0]
    norm = float(slope * x.max() / r.mean())
    return pd.DataFrame({"position": i, "rel_improvement": r, "from_step": a, "to_step": b}), norm


@dataclass(frozen=True)
class Uniformity:
    frame: pd.DataFrame  # per position: relative improvement
    slope: float  # normalised slope (0 = uniform)
    boot: np.ndarray  # the slope over window bootstrap resamples


@plan.step
def uniformity(cfg: TSLConfig, e1: dict) -> Uniformity:
    ev = e1["evals"]["id"]
    frame, slope = relative_improvement(cfg, ev)
    W = ev[next(iter(ev))].shape[0]
    rng = np.random.default_rng(cfg.seed + 1)
    boot = np.array([relative_improvement(cfg, ev, rng.integers(0, W, W))[1] for _ in range(cfg.n_boot)])
    return Uniformity(frame, slope, boot)


@dataclass(frozen=True)
class ReweightGains:
    final_loss: pd.DataFrame  # gamma, final ID loss
    best_gamma: float
    gain: float  # final ID loss, uniform minus the best γ (nats; positive = re-weighting helps)
    boot: np.ndarray  # the gain over window bootstrap resamples


@plan.step
def reweight_gains(cfg: TSLConfig, reweighting: dict) -> ReweightGains | None:
    """The final ID loss of each γ and the gain of the best one over uniform, with a paired window bootstrap."""
    if not reweighting:
        return None
    table = pd.DataFrame([{"gamma": g, "final_id_loss": float(r["final"]["id"].mean())}
                          for g, r in sorted(reweighting.items())], columns=["gamma", "final_id_loss"])
    base = reweighting[0.0]["final"]["id"].numpy().mean(1)
    gains = {g: base - reweighting[g]["final"]["id"].numpy().mean(1) for g in cfg.reweight_gammas}
    best = max(gains, key=lambda g: gains[g].mean())
    gb = gains[best]
    rng = np.random.default_rng(cfg.seed + 2)
    boot = np.array([gb[rng.integers(0, len(gb), len(gb))].mean() for _ in range(max(cfg.n_boot, 200))])
    return ReweightGains(table, best, float(gb.mean()), boot)


run_experiments = plan.run_all
