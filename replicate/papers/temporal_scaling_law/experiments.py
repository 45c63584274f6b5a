"""The Temporal Scaling Law's experiments, as one plan (``run_experiments(cfg)`` -> the bundle ``report.py`` reads).

Steps, in order (the notebook runs one per cell):

- ``data``: a byte-level BPE over the training split of the ID plays and of the stdlib source; token streams; fixed
  evaluation windows: ID = held-out plays, OOD = the histories (never trained on) or the Python reference
  (``ood_set``), E3's blend = half held-out plays, half held-out stdlib modules; the unigram entropy of the ID
  training stream (the count model every trained model must beat).
- ``e1``: the studied model, per-position loss on ID and OOD at every scheduled checkpoint.
- ``mixtures`` (E3): ``mix_seeds`` short runs per code fraction r, evaluated on the blend.
- ``reweighting``: E1's recipe trained with w_i ∝ L_i^γ (paper scale; on at smoke to test the path).
- ``fits``, ``positions``: stage-1 fits per (set, checkpoint) with their diagnostics; the per-position losses.
- ``forms``, ``trajectories``: every candidate temporal form on every parameter; what TSL extrapolates at the main
  fraction (c and a2 at the shared b, and their fitted forms: fig2 draws them, it fits nothing).
- ``predictions``, ``bootstrap``: predicted vs actual L(N) per set, fit fraction and method with each method's
  validity; the paired bootstrap over evaluation windows of the claims' methods.
- ``mixture_selection``, ``uniformity``, ``reweight_gains``, ``validity``: E3's predictions and picks with a window
  bootstrap; the relative-improvement profile over consecutive checkpoints and its bootstrap; the re-weighting
  gain; the checks that the models learned and the OOD loss falls.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from replicate.claims import Validity
from replicate.data import corpora, lm, tokenizer
from replicate.experiments import Plan
from replicate.models.lm import OptimConfig
from replicate.models.trainer import TrainSpec, prefetch, train
from replicate.papers.temporal_scaling_law import FORMS, PAPER_ID, TSLConfig, checkpoint_schedule
from replicate.papers.temporal_scaling_law.method import (
    FIXED_THETA,
    THETA,
    Clock,
    PositionWeightedLM,
    clock,
    fit_form,
    fit_at_b,
    fit_positions,
    mean_hyperbolic,
    r2,
    shared_b,
    spec_a2,
    spec_parameters,
)

TSL = "TSL"
SPEC = "TSL, spec forms (a0 log, a1 hyperbolic, a2 piecewise cosine)"
ANNEALING = "LR-annealing law E + A·S1^-α [− C·S2] on L(N) (Tissue et al.)"  # S2 only where the prefix covers it
POWER = "E + A·N^-α on L(N)"
PURE = "(N_c/N)^α on L(N)"
COSINE = "piecewise cosine on L(N) (ablation)"
METHODS = (TSL, SPEC, ANNEALING, POWER, PURE, COSINE)
CLAIM_METHODS = (TSL, ANNEALING, POWER)  # what the claims compare (the bootstrap refits these)

plan = Plan(PAPER_ID)


# ==================================================================================================== data


@dataclass(frozen=True)
class Data:
    tok: object
    id_train: np.ndarray  # ID training stream
    code_train: np.ndarray
    eval_sets: dict  # E1, (W, n+1) windows: "id" (held-out plays), "ood" (histories or the Python reference)
    mix_eval: dict  # E3, (W, n_mix+1) windows: "blend", half held-out plays and half held-out stdlib modules
    unigram_nats: float  # entropy of the ID training stream's unigram distribution: the count model to beat
    description: str
    sizes: dict  # what the notebook's prose reports: documents, bytes and tokens of each split


def _windows(docs_ids, n: int, seq_len: int) -> torch.Tensor:
    """``n`` windows; half-overlapping ones where the text is too short for ``n`` disjoint windows."""
    try:
        return lm.eval_windows(docs_ids, n, seq_len)
    except ValueError:
        return lm.eval_windows(docs_ids, n, seq_len, stride=(seq_len + 1) // 2)


@plan.step
def data(cfg: TSLConfig) -> Data:
    """Tokenizer trained on the training split of the ID plays and of the stdlib code (E3 mixes the two); token
    streams; fixed evaluation windows (module docstring)."""
    if cfg.id_corpus == "shakespeare" and cfg.ood_set == "histories":
        id_docs, ood_docs = corpora.shakespeare_split_by_genre(("histories",))
    else:
        id_docs, ood_docs = corpora.load(cfg.id_corpus), corpora.python_docs()
    if cfg.ood_set == "python_docs":
        ood_docs = corpora.python_docs()
    sh_tr, sh_ho = corpora.split(id_docs, cfg.heldout_fraction)
    py_tr, py_ho = corpora.split(corpora.python_stdlib(cfg.code_max_bytes))
    tok = tokenizer.train_bpe(sh_tr + py_tr, cfg.vocab_size, name=f"tsl-{cfg.ood_set}")
    enc = lambda d: tokenizer.encode_documents(tok, d)
    half = cfg.mix_eval_windows // 2
    blend = torch.cat([_windows(enc(sh_ho), half, cfg.mix_seq_len), _windows(enc(py_ho), half, cfg.mix_seq_len)])
    streams = {"id": lm.join(enc(sh_tr)), "code": lm.join(enc(py_tr))}
    counts = np.bincount(streams["id"].astype(np.int64), minlength=cfg.vocab_size).astype(float)
    p = counts[counts > 0] / counts.sum()
    nbytes = lambda ds: sum(len(d.text.encode("utf-8")) for d in ds)
    sizes = {"id_train_docs": len(sh_tr), "id_heldout_docs": len(sh_ho), "id_train_bytes": nbytes(sh_tr),
             "id_train_tokens": len(streams["id"]), "code_train_docs": len(py_tr), "code_train_tokens":
             len(streams["code"]), "ood_docs": len(ood_docs), "ood_bytes": nbytes(ood_docs)}
    return Data(
        tok=tok, id_train=streams["id"], code_train=streams["code"],
        eval_sets={"id": _windows(enc(sh_ho), cfg.eval_windows, cfg.seq_len),
                   "ood": _windows(enc(ood_docs), cfg.eval_windows, cfg.seq_len)},
        mix_eval={"blend": blend}, unigram_nats=float(-(p * np.log(p)).sum()),
        description=f"tok=bpe{cfg.vocab_size}:{tokenizer.tokenizer_fingerprint(tok)};"
                    f"id={corpora.fingerprint(sh_tr)};code={corpora.fingerprint(py_tr)};ood={corpora.fingerprint(ood_docs)}",
        sizes=sizes,
    )


@dataclass(frozen=True)
class Horizon:
    """The training schedule the laws need: total steps, tokens per step, the optimiser and the annealing
    momentum λ (scaled to the run: its time constant is ``tissue_momentum_frac`` of the steps)."""

    total_steps: int
    tokens_per_step: int
    opt: OptimConfig
    momentum: float

    def clock(self, steps) -> Clock:
        return clock(steps, self.opt, self.momentum)


def _horizon(cfg: TSLConfig, steps: int, seq_len: int, prefix: str = "") -> Horizon:
    return Horizon(steps, cfg.batch_size * seq_len, cfg.optim(steps, prefix=prefix),
                   1.0 - 1.0 / max(1.0, cfg.tissue_momentum_frac * steps))


def e1_horizon(cfg: TSLConfig) -> Horizon:
    return _horizon(cfg, cfg.steps, cfg.seq_len)


def mix_horizon(cfg: TSLConfig) -> Horizon:
    return _horizon(cfg, cfg.mix_steps, cfg.mix_seq_len, prefix="mix_")


# ============================================================================================ training runs


def e1_spec(cfg: TSLConfig, data: Data, gamma: float = 0.0) -> TrainSpec:
    return TrainSpec(cfg.decoder(cfg.vocab_size), cfg.optim(cfg.steps),
                     data.description + (f";gamma={gamma}" if gamma else ""), cfg.batch_size, cfg.seq_len, cfg.seed,
                     eval_steps=checkpoint_schedule(cfg.steps, cfg.n_checkpoints, cfg.n_log_checkpoints),
                     ckpt_every=max(10, cfg.steps // 20))


def e1_batches(cfg: TSLConfig, data: Data) -> lm.Batches:
    return lm.Batches((lm.Stream(data.id_train),), (1.0,), cfg.batch_size, cfg.seq_len, cfg.seed)


@plan.step
def e1(cfg: TSLConfig, data: Data) -> dict:
    """E1: train the model, evaluating per-position loss on ID and OOD windows at every scheduled checkpoint."""
    return train(PAPER_ID, e1_spec(cfg, data), e1_batches(cfg, data), data.eval_sets, **cfg.trainer_kwargs())


def _mixture_run(cfg: TSLConfig, data: Data, r: float, seed: int, threads: int) -> dict:
    """One E3 candidate: code fraction ``r``, seed ``seed``, trained at ``threads`` torch threads."""
    spec = TrainSpec(cfg.decoder(cfg.vocab_size, prefix="mix_"), cfg.optim(cfg.mix_steps, prefix="mix_"),
                     data.description + f";mix_code={r}", cfg.batch_size, cfg.mix_seq_len, seed,
                     eval_steps=checkpoint_schedule(cfg.mix_steps, cfg.mix_n_checkpoints, 0),
                     ckpt_every=max(10, cfg.mix_steps // 10))
    batches = lm.Batches((lm.Stream(data.id_train), lm.Stream(data.code_train)), (1 - r, r), cfg.batch_size,
                         cfg.mix_seq_len, seed)
    return train(PAPER_ID, spec, batches, data.mix_eval, **{**cfg.trainer_kwargs(), "threads": threads})


@plan.step
def mixtures(cfg: TSLConfig, data: Data) -> dict[tuple[float, int], dict]:
    """E3: ``mix_seeds`` runs per code fraction r; evaluation on the 50/50 blend of held-out plays and code.
    Keyed by (r, seed). With ``workers`` > 1 the (small) runs train side by side, one thread each, which is faster
    than one after another at two threads; the runs then always train at one thread, so their numbers do not depend
    on the worker count."""
    threads = 1 if cfg.workers > 1 else cfg.threads
    calls = [functools.partial(_mixture_run, cfg, data, r, seed, threads)
             for seed in range(cfg.seed, cfg.seed + cfg.mix_seeds) for r in cfg.mixture_code_fractions]
    prefetch(calls, cfg.workers, threads)
    return {(c.args[2], c.args[3]): c() for c in calls}


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


# =================================================================================================== analysis


def position_index(cfg: TSLConfig, n: int) -> np.ndarray:
    return np.arange(n, dtype=float) + cfg.position_start


class Curve(NamedTuple):
    """One checkpoint's per-position loss on an evaluation set, over its windows (or a bootstrap resample of them)."""

    L: np.ndarray  # mean loss per position
    se: np.ndarray  # its standard error over windows
    loss: float  # L(N): the mean over windows and positions
    loss_se: float  # its standard error: the std of the window means / sqrt(W) (a window's positions are correlated)


def curves(evals: dict, idx: np.ndarray | None = None) -> dict[int, Curve]:
    """step -> :class:`Curve` over the windows ``idx`` (a resample with repeats; all windows by default). A resample
    is a weighted mean (window counts), so no (W, n) copy is made per checkpoint."""
    out = {}
    for step, m in sorted(evals.items()):
        m = np.asarray(m.numpy() if isinstance(m, torch.Tensor) else m, dtype=np.float64)
        W = len(m)
        w = np.ones(W) if idx is None else np.bincount(idx, minlength=W).astype(float)
        mean = w @ m / W
        var = np.maximum(w @ (m * m) / W - mean**2, 0.0) * W / (W - 1)
        wm = m.mean(1)
        lv = max(float(w @ (wm * wm) / W - (w @ wm / W) ** 2), 0.0) * W / (W - 1)
        out[step] = Curve(mean, np.sqrt(var / W), float(w @ wm / W), float(np.sqrt(lv / W)))
    return out


def stage1(cfg: TSLConfig, curves_by_step: dict, full: bool = True) -> pd.DataFrame:
    """One row per checkpoint: L(N) and its standard error, and (``full``) the stage-1 fit of the law with its
    diagnostics. The bootstrap needs only L(N): TSL itself fits its shared b from the curves."""
    rows = []
    for step, cv in curves_by_step.items():
        fit = fit_positions(position_index(cfg, len(cv.L)), cv.L, cv.se) if full else {}
        rows.append({"step": step, "loss": cv.loss, "loss_se": cv.loss_se, **fit})
    return pd.DataFrame(rows)


def fit_mask(cfg: TSLConfig, steps: np.ndarray, total: int, frac: float, schedule: tuple) -> np.ndarray:
    """The checkpoints the temporal fits see: on the uniform schedule, after ``drop_before_frac``, up to ``frac``."""
    u = np.asarray(steps) / total
    return np.isin(steps, schedule) & (u >= cfg.drop_before_frac - 1e-9) & (u <= frac + 1e-9)


def _anneal(cfg: TSLConfig, ck: Clock, obs: np.ndarray) -> bool:
    """The annealing term enters when the observed prefix holds ``anneal_min_frac`` of the final annealing area."""
    return bool(ck.s2[obs].max() >= cfg.anneal_min_frac)


def tsl_trajectories(cfg: TSLConfig, s1df: pd.DataFrame, ck: Clock, obs: np.ndarray, curves_by_step: dict,
                     n_positions: int, anneal: bool) -> tuple[dict, dict, bool]:
    """TSL's stage 2: the per-checkpoint parameters it extrapolates (with ``share_b``: one b fitted to the observed
    checkpoints, then c and a2 at that b at every checkpoint; else the stage-1 c, b, a2) and their temporal forms
    fitted on the observed ones. Returns (points: name -> array, with se_<name>; fits: name -> FormFit; b at a
    bound)."""
    steps = s1df["step"].to_numpy()
    if cfg.share_b:
        i = position_index(cfg, n_positions)
        b, b_bound = shared_b(i, [curves_by_step[st][:2] for st in steps[obs]])
        at = np.array([fit_at_b(i, *curves_by_step[st][:2], b) for st in steps])  # (c, a2, se_c, se_a2) per step
        points = {"c": at[:, 0], "a2": at[:, 1], "b": np.full(len(steps), b), "se_c": at[:, 2], "se_a2": at[:, 3],
                  "se_b": np.zeros(len(steps))}
        names = ("c", "a2")
    else:
        points = {k: s1df[k].to_numpy() for k in ("c", "b", "a2", "se_c", "se_b", "se_a2")}
        b_bound, names = False, ("c", "b", "a2")
    fits = {p: _form_or_constant(getattr(cfg, f"{p}_form"), ck.at(obs), points[p][obs], points[f"se_{p}"][obs],
                                 decreasing=p == "a2", anneal=anneal) for p in names}
    return points, fits, b_bound


def _form_or_constant(form: str, obs: Clock, y: np.ndarray, se: np.ndarray, **kw):
    """The configured form, with two fallbacks chosen by AIC (χ² + 2k), each a member of a simpler family rather than
    a failure hidden: a constant, where it follows the points within noise (a parameter whose drift over the prefix
    is not resolved has no shape to extrapolate); and, where the form's shape θ runs to a bound of its range (the
    points do not pin it down), the family's members with the shape fixed (for the power forms: linear, θ = −1, and
    logarithmic, θ = 0). The fit returned says which it is (``form``, ``theta``, ``theta_fixed``)."""
    f = fit_form(form, obs, y, se, **kw)
    cands = [f] if f.ok else []
    if form in THETA and f.converged and not f.ok:
        cands += [g for t in FIXED_THETA for g in [fit_form(form, obs, y, se, theta=t, **kw)] if g.ok]
    const = fit_form("constant", obs, y, se)
    if const.fits_its_points:
        cands.append(const)
    return min(cands, key=lambda x: x.aic) if cands else f


def predict(cfg: TSLConfig, s1df: pd.DataFrame, horizon: Horizon, fit_frac: float, n_positions: int,
            schedule: tuple, curves_by_step: dict, only: tuple | None = None,
            log_v: float | None = None) -> dict[str, tuple]:
    """Predicted L(N) at every checkpoint per method, each fitted on the observed prefix (:func:`fit_mask`), with its
    :class:`Validity`: every temporal fit converged, its shape parameter inside its bounds, its parameters
    identifiable (|corr| <= 0.99), the predicted trajectories inside their domain (c >= 0, b in [0, n], a2 > 0) and
    every predicted loss inside (0, ln V] (``log_v``). ``only`` restricts the methods (the bootstrap's). With
    ``share_b``, TSL fits one b to the observed checkpoints' curves (``curves_by_step``: step -> (L_i, se_i)) and c,
    a2 at that b at every checkpoint."""
    want = lambda m: only is None or m in only
    steps = s1df["step"].to_numpy()
    ck = horizon.clock(steps)
    obs = fit_mask(cfg, steps, horizon.total_steps, fit_frac, schedule)
    oc = ck.at(obs)
    anneal = _anneal(cfg, ck, obs)
    L, Lse = s1df["loss"].to_numpy(), s1df["loss_se"].to_numpy()
    fut = steps / horizon.total_steps > fit_frac + 1e-9
    out = {}

    def checked(pred, fits, domain=()):
        fails = [f"{name}: {f.form} fit {'did not converge' if not f.converged else 'at a bound of its shape' if f.theta_at_bound else f'not identifiable (|corr| {f.max_corr:.3f})'}"
                 for name, f in fits if not f.ok]
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = float(np.sqrt(np.mean(((pred[obs] - L[obs]) / L[obs]) ** 2)))
        if not rel <= cfg.max_prefix_error:  # NaN fails too
            fails.append(f"misses its own prefix: in-sample relative error {rel:.2%} of L(N) over {int(obs.sum())} "
                         f"checkpoints (more than {cfg.max_prefix_error:.1%})")
        for name, values, lo, hi in domain:
            bad = ~np.isfinite(values[fut]) | (values[fut] < lo) | (values[fut] > hi)
            if bad.any():
                fails.append(f"{name} outside [{lo:g}, {hi:g}] at {int(bad.sum())} future checkpoints")
        if log_v is not None:
            bad = ~np.isfinite(pred[fut]) | (pred[fut] <= 0) | (pred[fut] > log_v)
            if bad.any():
                fails.append(f"predicted loss outside (0, ln V = {log_v:.2f}] at {int(bad.sum())} future checkpoints")
        return pred, Validity(tuple(fails))

    if want(TSL):
        points, fits, b_bound = tsl_trajectories(cfg, s1df, ck, obs, curves_by_step, n_positions, anneal)
        traj = {p: f.predict(ck) for p, f in fits.items()}
        traj.setdefault("b", points["b"])
        pred = mean_hyperbolic(n_positions, traj["c"], traj["b"], traj["a2"], start=cfg.position_start)
        pred, v = checked(pred, fits.items(), [("c", traj["c"], 0.0, np.inf), ("b", traj["b"], 0.0, n_positions),
                                               ("a2", traj["a2"], 1e-9, np.inf)])
        out[TSL] = (pred, v + Validity.check(b=(not b_bound, f"the shared b sits at a bound of [0, {n_positions}]")))
    if want(SPEC):
        a0, a1, a2 = spec_parameters(s1df["c"].to_numpy(), s1df["b"].to_numpy(), s1df["a2"].to_numpy())
        if not (np.all(np.isfinite(a0[obs])) and np.all(np.isfinite(a1[obs]))):
            out[SPEC] = (np.full(len(steps), np.nan), Validity(("a0, a1 infinite (b at 0): the spec's parameters "
                                                               "are not identified by these fits",)))
        else:
            se = {k: s1df[f"se_{k}"].to_numpy()[obs] for k in ("a0", "a1", "a2")}
            fits = {"a0": fit_form("log", oc, a0[obs], se["a0"]), "a1": fit_form("hyperbolic", oc, a1[obs], se["a1"]),
                    "a2": spec_a2(oc, a2[obs], se["a2"])}
            t = {p: f.predict(ck) for p, f in fits.items()}
            with np.errstate(divide="ignore", invalid="ignore"):
                pred = mean_hyperbolic(n_positions, t["a0"] / t["a1"], 1.0 / t["a1"], t["a2"], start=cfg.position_start)
            out[SPEC] = checked(pred, fits.items(), [("a0", t["a0"], 0.0, np.inf), ("a1", t["a1"], 1e-12, np.inf),
                                                     ("a2", t["a2"], 1e-9, np.inf)])
    for method, form, kw in ((ANNEALING, "lr_power", {"decreasing": True, "anneal": anneal}),
                             (POWER, "power", {"decreasing": True}), (COSINE, "spec_a2", {})):
        if want(method):
            f = spec_a2(oc, L[obs], Lse[obs]) if form == "spec_a2" else fit_form(form, oc, L[obs], Lse[obs], **kw)
            out[method] = checked(f.predict(ck), [("L", f)])
    if want(PURE):  # ln L = ln(N_c) α − α ln N: a straight line in log-log
        slope, icpt = np.polyfit(np.log(ck.u[obs]), np.log(L[obs]), 1)
        out[PURE] = checked(np.exp(icpt + slope * np.log(ck.u)), [])
    return out


def scores(actual: np.ndarray, pred: np.ndarray) -> dict:
    if len(pred) == 0 or not np.all(np.isfinite(pred)):
        return {"r2": float("nan"), "mse": float("nan"), "mae": float("nan"), "mape": float("nan"),
                "max_rel_err": float("nan")}
    rel = np.abs(pred - actual) / actual
    return {"r2": r2(actual, pred), "mse": float(np.mean((pred - actual) ** 2)),
            "mae": float(np.mean(np.abs(pred - actual))), "mape": float(np.mean(rel)), "max_rel_err": float(rel.max())}


def e1_schedule(cfg: TSLConfig) -> tuple:
    return checkpoint_schedule(cfg.steps, cfg.n_checkpoints, 0)


@plan.step
def positions(cfg: TSLConfig, e1: dict) -> pd.DataFrame:
    """Tidy per-position losses of E1: set, step, tokens, position, loss, se."""
    h = e1_horizon(cfg)
    rows = []
    for name, ev in e1["evals"].items():
        for step, cv in curves(ev).items():
            rows.append(pd.DataFrame({"set": name, "step": step, "tokens": step * h.tokens_per_step,
                                      "position": position_index(cfg, len(cv.L)), "loss": cv.L, "se": cv.se}))
    return pd.concat(rows, ignore_index=True)


@plan.step
def fits(cfg: TSLConfig, e1: dict) -> pd.DataFrame:
    """Stage-1 fits of E1: one row per (set, checkpoint); ``uniform`` marks the uniform schedule, ``fitted`` the
    checkpoints after ``drop_before_frac`` that every temporal fit and claim uses."""
    h, sched = e1_horizon(cfg), e1_schedule(cfg)
    out = []
    for name, ev in e1["evals"].items():
        df = stage1(cfg, curves(ev))
        df.insert(0, "set", name)
        df.insert(2, "tokens", df["step"] * h.tokens_per_step)
        df["uniform"] = df["step"].isin(sched)
        df["fitted"] = df["uniform"] & (df["step"] / h.total_steps >= cfg.drop_before_frac - 1e-9)
        out.append(df)
    return pd.concat(out, ignore_index=True)


SPEC_FORMS = {"a0": "log", "a1": "hyperbolic", "a2": "piecewise_cosine"}  # the spec's families (§3.3); a2 with δ2
# where it improves the fit (method.spec_a2)


@plan.step
def forms(cfg: TSLConfig, fits: pd.DataFrame) -> pd.DataFrame:
    """Every candidate form fitted to every parameter trajectory (identifiable c, b, a2 and the spec's derived a0,
    a1), weighted by the per-checkpoint standard errors: R² and χ²/dof over all fitted checkpoints (shape), the MSE
    of extrapolating from the main fraction (prediction), whether the fit passed its checks, and whether the
    trajectory is ``measurable`` at all: a constant misses it beyond noise (χ² above the 0.999 quantile), i.e. the
    parameter's drift over training is larger than its per-checkpoint error. ``spec_form`` marks the spec's family
    per parameter (for a2, the piecewise cosine with or without δ2, whichever :func:`spec_a2` keeps)."""
    h = e1_horizon(cfg)
    rows = []
    for name, df in fits.groupby("set", sort=False):
        d = df[df["fitted"]].sort_values("step")
        ck = h.clock(d["step"].to_numpy())
        obs = ck.u <= cfg.main_fit_fraction + 1e-9
        for p in ("c", "b", "a2", "a0", "a1"):
            y, se = d[p].to_numpy(), d[f"se_{p}"].to_numpy()
            if not (np.all(np.isfinite(se)) and np.all(se > 0)):
                se = None  # b at 0 somewhere: a0, a1 infinite there (their fits then fail as not finite)
            measurable = not fit_form("constant", ck, y, se).fits_its_points if se is not None else False
            spec = spec_a2(ck, y, se).form if p == "a2" else SPEC_FORMS.get(p)
            for form in FORMS:
                kw = {"decreasing": p == "a2", "anneal": _anneal(cfg, ck, obs)}
                full = fit_form(form, ck, y, se, **kw)
                ext = fit_form(form, ck.at(obs), y[obs], None if se is None else se[obs], **kw)
                rows.append({"set": name, "parameter": p, "form": form,
                             "r2_full": r2(y, full.predict(ck)) if np.all(np.isfinite(y)) else np.nan,
                             "chi2_red": full.chi2_red, "fits_within_noise": full.fits_its_points,
                             "fit_ok": full.ok, "max_corr": full.max_corr, "measurable": measurable,
                             "extrapolation_mse": float(np.mean((ext.predict(ck.at(~obs)) - y[~obs]) ** 2)),
                             "spec_form": spec == form,
                             "configured": p in ("c", "b", "a2") and getattr(cfg, f"{p}_form") == form})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Trajectories:
    points: pd.DataFrame  # per (set, checkpoint): the c, b, a2 TSL extrapolates, with standard errors
    curves: pd.DataFrame  # per (set, parameter): its fitted form on a fine grid of steps


@plan.step
def trajectories(cfg: TSLConfig, e1: dict, fits: pd.DataFrame) -> Trajectories:
    """What TSL extrapolates at the main fraction, for fig2: the per-checkpoint parameters (c and a2 at the shared
    b) and the configured forms fitted on the prefix, evaluated from the first fitted checkpoint to the end."""
    h = e1_horizon(cfg)
    pts, crv = [], []
    for name, df in fits.groupby("set", sort=False):
        d = df.sort_values("step")
        steps = d["step"].to_numpy()
        ck = h.clock(steps)
        obs = fit_mask(cfg, steps, h.total_steps, cfg.main_fit_fraction, e1_schedule(cfg))
        points, forms_, _ = tsl_trajectories(cfg, d, ck, obs, curves(e1["evals"][name]), cfg.seq_len,
                                             _anneal(cfg, ck, obs))
        keep = d["fitted"].to_numpy()
        pts.append(pd.DataFrame({"set": name, "step": steps[keep], "tokens": steps[keep] * h.tokens_per_step,
                                 **{k: v[keep] for k, v in points.items()}}))
        grid = np.unique(np.linspace(steps[keep].min(), h.total_steps, 200).round().astype(int))
        cg = h.clock(grid)
        for p in ("c", "b", "a2"):
            f = forms_.get(p)
            crv.append(pd.DataFrame({"set": name, "parameter": p, "form": f.form if f else "shared (constant)",
                                     "step": grid, "tokens": grid * h.tokens_per_step,
                                     "value": f.predict(cg) if f else np.full(len(grid), points["b"][0]),
                                     "fitted_range": grid / h.total_steps <= cfg.main_fit_fraction + 1e-9,
                                     "fit_ok": f.ok if f else True}))
    return Trajectories(pd.concat(pts, ignore_index=True), pd.concat(crv, ignore_index=True))


@plan.step
def predictions(cfg: TSLConfig, e1: dict, fits: pd.DataFrame) -> pd.DataFrame:
    """Predicted vs actual L(N) for every set, fit fraction, method and checkpoint, with the method's validity."""
    h = e1_horizon(cfg)
    rows = []
    for name, df in fits.groupby("set", sort=False):
        df = df.sort_values("step")
        cv = curves(e1["evals"][name])
        for frac in cfg.fit_fractions:
            for method, (pred, v) in predict(cfg, df, h, frac, cfg.seq_len, e1_schedule(cfg), cv,
                                             log_v=float(np.log(cfg.vocab_size))).items():
                rows.append(pd.DataFrame({"set": name, "fit_fraction": frac, "method": method, "step": df["step"],
                                          "tokens": df["tokens"], "actual": df["loss"], "predicted": pred,
                                          "future": df["step"] / h.total_steps > frac + 1e-9,
                                          "scored": df["uniform"].to_numpy(), "valid": v.ok,
                                          "validity": "; ".join(v.failures)}))
    return pd.concat(rows, ignore_index=True)


def _bootstrap_set(cfg: TSLConfig, name: str, k: int, ev: dict) -> list[dict]:
    """The bootstrap of one evaluation set (its own generator, seeded by the set's index ``k``, so the result does
    not depend on which process computes it)."""
    h, sched = e1_horizon(cfg), e1_schedule(cfg)
    rng = np.random.default_rng([cfg.seed, k])
    log_v = float(np.log(cfg.vocab_size))
    W = next(iter(ev.values())).shape[0]
    rows = []
    for b in range(cfg.n_boot):
        cv = curves(ev, rng.integers(0, W, W))
        df = stage1(cfg, cv, full=not cfg.share_b).sort_values("step")  # without a shared b TSL needs stage 1
        for frac in cfg.fit_fractions:
            fut = (df["step"] / h.total_steps > frac + 1e-9).to_numpy()
            for method, (pred, v) in predict(cfg, df, h, frac, cfg.seq_len, sched, cv, only=CLAIM_METHODS,
                                             log_v=log_v).items():
                rows.append({"set": name, "fit_fraction": frac, "boot": b, "method": method, "valid": v.ok,
                             **scores(df["loss"].to_numpy()[fut], pred[fut])})
    return rows


@plan.step
def bootstrap(cfg: TSLConfig, e1: dict) -> pd.DataFrame:
    """Paired bootstrap over evaluation windows of the prediction scores at every fit fraction: every resample
    recomputes the curves and refits every claim method (TSL's shared b included) on them. One row per (set, fit
    fraction, resample, method), with the method's validity on that resample. The sets run in parallel processes
    where there are cores for them (the same numbers either way)."""
    import concurrent.futures as cf
    import multiprocessing as mp
    import os

    sched = e1_schedule(cfg)
    jobs = [(cfg, name, k, {s: m.numpy().astype(np.float64) for s, m in ev.items() if s in sched})
            for k, (name, ev) in enumerate(e1["evals"].items())]
    n = min(len(jobs), os.cpu_count() or 1)
    if n > 1:
        try:
            with cf.ProcessPoolExecutor(n, mp_context=mp.get_context("spawn")) as pool:
                parts = list(pool.map(_bootstrap_set, *zip(*jobs)))
        except cf.process.BrokenProcessPool:  # no importable main (a script on stdin): one after another
            parts = [_bootstrap_set(*j) for j in jobs]
    else:
        parts = [_bootstrap_set(*j) for j in jobs]
    return pd.DataFrame([r for p in parts for r in p])


@dataclass(frozen=True)
class MixtureSelection:
    table: pd.DataFrame  # one row per (fit fraction, code fraction, seed): each rule's forecast, the actual final loss
    boot: pd.DataFrame  # per (resample, fit fraction, code fraction): seed-mean forecasts and actual final loss


MIX_RULES = ("TSL", "annealing_law", "prefix_loss")  # the columns of MixtureSelection that rank candidates


def mix_fractions(cfg: TSLConfig) -> list[float]:
    """The prefixes E3 forecasts from: every fit fraction and the one claim C5 is judged at."""
    return sorted(set(cfg.fit_fractions) | {cfg.mix_fit_fraction})


@plan.step
def mixture_selection(cfg: TSLConfig, mixtures: dict) -> MixtureSelection:
    """E3: per fit fraction, candidate r and seed, each rule's forecast of the final loss on the blend from the
    prefix (TSL, the whole-loss law, and the loss at the cut-off itself: the greedy rule to beat), and the actual
    final loss. With ``mix_per_domain`` each law is fitted to the plays windows and to the code windows of the blend
    separately and the two forecasts averaged (the blend's per-position curve is a mixture of two hyperbolas, not
    one). The bootstrap resamples seeds within each candidate and windows within each domain (the same draw for every
    candidate and rule: the differences are paired); the forecasts are fixed per run (seed noise dominates them)."""
    h = mix_horizon(cfg)
    sched = checkpoint_schedule(cfg.mix_steps, cfg.mix_n_checkpoints, 0)
    log_v = float(np.log(cfg.vocab_size))
    rows, finals = [], {}
    for (r, seed), res in sorted(mixtures.items()):
        ev = {s: m.numpy().astype(np.float64) for s, m in res["evals"]["blend"].items()}
        W = next(iter(ev.values())).shape[0]
        parts = [np.arange(W // 2), np.arange(W // 2, W)] if cfg.mix_per_domain else [np.arange(W)]
        blend = stage1(cfg, curves(ev), full=False).sort_values("step")
        steps = blend["step"].to_numpy()
        for frac in mix_fractions(cfg):
            fc = {TSL: [], ANNEALING: []}
            for part in parts:
                cv = curves({s: m[part] for s, m in ev.items()})
                df = stage1(cfg, cv, full=False).sort_values("step")
                for m, (pred, v) in predict(cfg, df, h, frac, cfg.mix_seq_len, sched, cv, only=(TSL, ANNEALING),
                                            log_v=log_v).items():
                    fc[m].append((float(pred[-1]), v))
            obs = fit_mask(cfg, steps, h.total_steps, frac, sched)
            row = {"fit_fraction": frac, "code_fraction": r, "seed": seed,
                   "prefix_loss": float(blend["loss"][obs].iloc[-1]),
                   "actual_final": float(res["final"]["blend"].numpy().mean())}
            for m, col in ((TSL, "TSL"), (ANNEALING, "annealing_law")):
                row[col] = float(np.mean([p for p, _ in fc[m]]))
                row[f"{col}_valid"] = all(v.ok for _, v in fc[m])
                row[f"{col}_validity"] = "; ".join(sorted({f for _, v in fc[m] for f in v.failures}))
            rows.append(row)
        finals[(r, seed)] = [res["final"]["blend"].numpy()[part].mean(1) for part in parts]
    table = pd.DataFrame(rows)
    rng = np.random.default_rng(cfg.seed + 3)
    cands = sorted({r for r, _ in finals})
    seeds = {r: sorted(s for rr, s in finals if rr == r) for r in cands}
    sizes = [len(f) for f in finals[next(iter(finals))]]
    by = {(f, r): t.set_index("seed")[list(MIX_RULES)]
          for (f, r), t in table.groupby(["fit_fraction", "code_fraction"])}
    boot = []
    for k in range(max(cfg.n_boot, 200)):
        idx = [rng.integers(0, n, n) for n in sizes]
        for r in cands:
            pick = rng.choice(seeds[r], len(seeds[r]))
            actual = float(np.mean([np.mean([f[i].mean() for f, i in zip(finals[(r, s)], idx)]) for s in pick]))
            for frac in mix_fractions(cfg):
                fc = by[(frac, r)].loc[pick].mean()
                boot.append({"boot": k, "fit_fraction": frac, "code_fraction": r, "actual_final": actual,
                             **{col: float(fc[col]) for col in MIX_RULES}})
    return MixtureSelection(table, pd.DataFrame(boot))


def relative_improvement(cfg: TSLConfig, ev: dict, idx=None) -> tuple[pd.DataFrame, float, float]:
    """v1 insight over consecutive checkpoints (spec §3.6): r_i^k = (L_i(N_k) − L_i(N_{k+1})) / L_i(N_k) for every
    consecutive pair of fitted checkpoints, averaged over the pairs: r_i. Returns the per-position profile and two
    normalised slopes d r / d ln i × ln(n) / mean(r), the relative change of r across the positions (0 = uniform):
    the least-squares line over positions (each position one point, so the long-context octaves dominate), and the
    octave-weighted one (weights 1/i: every octave of context counts the same, as the early positions' share of
    the claim asks)."""
    h = e1_horizon(cfg)
    sched = e1_schedule(cfg)
    steps = [s for s in sorted(ev) if s in sched and s / h.total_steps >= cfg.drop_before_frac - 1e-9]
    c = curves({s: ev[s] for s in steps}, idx)
    L = np.stack([c[s].L for s in steps])  # (K, n)
    r = ((L[:-1] - L[1:]) / L[:-1]).mean(0)
    i = position_index(cfg, len(r))
    x = np.log(i + (1 - cfg.position_start))
    norm = x.max() / r.mean()
    slope = np.polyfit(x, r, 1)[0] * norm
    octave = np.polyfit(x, r, 1, w=1.0 / np.sqrt(i + (1 - cfg.position_start)))[0] * norm
    return (pd.DataFrame({"position": i, "rel_improvement": r, "from_step": steps[0], "to_step": steps[-1],
                          "pairs": len(steps) - 1}), float(slope), float(octave))


@dataclass(frozen=True)
class Uniformity:
    frame: pd.DataFrame  # per position: mean relative improvement over consecutive checkpoints
    slope: float  # normalised slope (0 = uniform), positions weighted equally
    slope_octave: float  # the same, octaves of context weighted equally
    boot: np.ndarray  # (n_boot, 2): both slopes over window bootstrap resamples


@plan.step
def uniformity(cfg: TSLConfig, e1: dict) -> Uniformity:
    ev = {s: m.numpy().astype(np.float64) for s, m in e1["evals"]["id"].items()}
    frame, slope, octave = relative_improvement(cfg, ev)
    W = ev[next(iter(ev))].shape[0]
    rng = np.random.default_rng(cfg.seed + 1)
    boot = np.array([relative_improvement(cfg, ev, rng.integers(0, W, W))[1:] for _ in range(cfg.n_boot)])
    return Uniformity(frame, slope, octave, boot)


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


@plan.step
def validity(cfg: TSLConfig, data: Data, e1: dict, fits: pd.DataFrame, mixtures: dict) -> dict[str, Validity]:
    """The experiment's own checks, per evaluation set: the model learned (its final ID loss is below the unigram
    entropy of the ID training text), the set's loss fell from the first fitted checkpoint to the end (an OOD set
    whose loss rises tests nothing about forecasting learning), and E3's candidates learned too."""
    out = {}
    final_id = float(e1["final"]["id"].mean())
    learned = (final_id < data.unigram_nats,
               f"E1's final ID loss {final_id:.3f} nats is not below the unigram entropy {data.unigram_nats:.3f}")
    for s in ("id", "ood"):
        d = fits[(fits["set"] == s) & fits["fitted"]].sort_values("step")
        first, last = float(d["loss"].iloc[0]), float(d["loss"].iloc[-1])
        out[s] = Validity.check(learned=learned, falls=(last < first, f"{s.upper()} loss rose from {first:.3f} to "
                                                        f"{last:.3f} nats over the fitted checkpoints"))
    mix_final = max(float(r["final"]["blend"].mean()) for r in mixtures.values())
    out["mixtures"] = Validity.check(learned=(mix_final < np.log(cfg.vocab_size) - 1.0,
                                              f"an E3 candidate ends at {mix_final:.3f} nats, within 1 nat of uniform"))
    return out


run_experiments = plan.run_all
