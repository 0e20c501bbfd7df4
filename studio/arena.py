"""The Arena leaderboard: online Elo, Bradley-Terry, bootstrap intervals, ranks, battle counts and win rates.

Pure functions over battles, computed the way Chatbot Arena computes its leaderboard (FastChat
``fastchat/serve/monitor/rating_systems.py`` and ``fastchat/serve/monitor/elo_analysis.py``). Nothing here
touches the store, the registry or the page; the store keeps the battles, the Arena tab and
``wvstudio arena leaderboard`` call :func:`leaderboard`.

A *battle* is one vote between two anonymous (or named) answers: ``model_a``, ``model_b``, ``winner`` (one of
:data:`WINNERS`) and ``anony`` (whether the voter saw the model names only after voting). Every function takes
``battles`` as an iterable of :class:`Battle` or of mappings with those keys (``anony`` optional), mixed freely;
it is read once, so a generator will do. A mapping without ``anony`` counts as anonymous (``Battle``'s
default); ``anony`` may be True/False or 1/0, and ``None`` (unknown) counts as not anonymous. A battle is
checked before anything is computed: an unknown winner, a model battling itself, a missing or empty model
name, a non-boolean ``anony`` or an item that is neither a ``Battle`` nor a mapping raises ``ValueError``
naming the battle's index (0-based position in ``battles``) and the value at fault, and nothing is returned.

Ties: ``"tie"`` and ``"tie (bothbad)"`` count as half a win for each side, in Elo and in Bradley-Terry alike
(FastChat ``compute_elo`` and ``bt_loss_and_grad``: "this form naturally counts a draw as half a win and half
a loss").

Ratings are in Elo points: a gap of ``scale`` points means odds of ``base`` to 1 (400 points: 10 to 1).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

__all__ = [
    "WINNERS", "ELO_K", "ELO_SCALE", "ELO_BASE", "ELO_INIT", "BT_PRIOR",
    "Battle", "LeaderboardRow",
    "online_elo", "bradley_terry", "bootstrap_intervals", "ranks_from_intervals", "pair_counts",
    "win_rate_matrix", "leaderboard",
]

WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)")
"""Chatbot Arena's winner values (FastChat ``clean_battle_data.py``): the left answer won, the right answer won,
both were as good, both were bad. The two ties count alike everywhere here."""

ELO_K, ELO_SCALE, ELO_BASE, ELO_INIT = 4, 400, 10, 1000
"""Chatbot Arena's Elo constants (FastChat ``compute_elo``): update step K, scale and base (a gap of ``scale``
points means odds of ``base`` to 1), and the rating every model starts from (also the Bradley-Terry mean)."""

BT_PRIOR = 1e-3
"""Precision of the Gaussian prior (ridge) on the Bradley-Terry log-strengths theta (natural log-odds units):
the fit minimises ``negative log-likelihood + BT_PRIOR / 2 * sum(theta ** 2)``, the likelihood summed (not
averaged) over battles. As a prior it has a standard deviation of 1 / sqrt(BT_PRIOR) = 31.6 log-odds, about
5,500 Elo points: far wider than any real spread of ratings, so it matters only where the battles say nothing.

Why: the maximum likelihood does not exist when a model has won (or lost) every battle, or when the models fall
into groups that never met (FastChat then stops L-BFGS after 100 iterations wherever it is). With the prior
the fit is unique in every case, and an undefeated model gets a large, finite rating and a wide interval.
Where the maximum likelihood exists the prior moves ratings very little: 0.13 Elo point on a 3-1 record
between two models, under 0.01 with a thousand battles (tests/test_arena_ratings.py measures both).
It also anchors the scale: the penalty's gradient vanishes only where the log-strengths sum to zero, so the
Bradley-Terry ratings have mean ``init`` (:data:`ELO_INIT`)."""

_OUTCOME = {"model_a": 0, "tie": 1, "tie (bothbad)": 1, "model_b": 2}
"""Winner value -> outcome code seen from model_a: 0 = model_a won, 1 = tie, 2 = model_b won."""

_SCORE_A = (1.0, 0.5, 0.0)
"""Outcome code -> model_a's score (1 win, 0.5 tie, 0 loss)."""


@dataclass(frozen=True)
class Battle:
    """One Arena vote between ``model_a`` (shown on the left) and ``model_b`` (on the right).

    Fields: ``model_a``, ``model_b`` (model names, non-empty and different), ``winner`` (one of
    :data:`WINNERS`), ``anony`` (True when the voter saw the names only after voting; the leaderboard's
    ``anony_only`` keeps only these, as Chatbot Arena's leaderboard does).

    Raises ``ValueError`` naming the value at fault: a winner not in :data:`WINNERS`, an empty or non-string
    model name, a model against itself, a non-boolean ``anony``.
    """

    model_a: str
    model_b: str
    winner: str
    anony: bool = True

    def __post_init__(self):
        problem = _battle_problem(self.model_a, self.model_b, self.winner)
        if problem:
            raise ValueError(problem)
        if not isinstance(self.anony, (bool, np.bool_)):
            raise ValueError(f"anony must be True or False, got {self.anony!r}")


@dataclass
class LeaderboardRow:
    """One model's row of the Arena leaderboard (:func:`leaderboard`).

    - ``rank``: 1 + the number of models whose ``bt_lo`` is above this model's ``bt_hi`` (FastChat
      ``elo_analysis.py``, "compute ranking based on CI"); equal ranks mean the intervals cannot tell them apart.
    - ``model``: the model's name.
    - ``elo``: online Elo rating after all battles, in the order given (:func:`online_elo`), Elo points.
    - ``bt``: Bradley-Terry rating (:func:`bradley_terry`), Elo points, mean over the models = ``ELO_INIT``.
    - ``bt_lo``, ``bt_hi``: the 2.5 and 97.5 percentiles of the bootstrapped Bradley-Terry rating
      (:func:`bootstrap_intervals`), Elo points; both equal ``bt`` when the leaderboard ran with no bootstrap.
    - ``battles``, ``wins``, ``ties``, ``losses``: this model's battle count and outcomes (both ties count as
      ties; ``battles = wins + ties + losses``).
    """

    rank: int
    model: str
    elo: float
    bt: float
    bt_lo: float
    bt_hi: float
    battles: int
    wins: int
    ties: int
    losses: int


# ----------------------------------------------------------------------------------------------------------------
# Input


def _battle_problem(model_a: Any, model_b: Any, winner: Any) -> str | None:
    """What is wrong with one battle's fields, or None."""
    for name, value in (("model_a", model_a), ("model_b", model_b)):
        if not isinstance(value, str) or not value:
            return f"{name} must be a non-empty model name, got {value!r}"
    if model_a == model_b:
        return f"model_a and model_b are both {model_a!r} (a model cannot battle itself)"
    if not isinstance(winner, str) or winner not in _OUTCOME:
        return f"winner {winner!r} is not one of {', '.join(repr(w) for w in WINNERS)}"
    return None


def _read(battles: Iterable[Battle | Mapping[str, Any]]) -> list[tuple[str, str, int, bool]]:
    """Check every battle and return ``(model_a, model_b, outcome code, anony)`` per battle, in order.

    Raises ``ValueError("battle <index>: ...")`` at the first bad battle.
    """
    if battles is None or isinstance(battles, (str, bytes, Mapping, Battle)):
        raise ValueError(f"battles must be a list (or other iterable) of battles, got {type(battles).__name__}")
    rows = []
    for i, b in enumerate(battles):
        if isinstance(b, Battle):
            rows.append((b.model_a, b.model_b, _OUTCOME[b.winner], bool(b.anony)))
            continue
        if not isinstance(b, Mapping):
            raise ValueError(f"battle {i}: expected a Battle or a dict with model_a, model_b and winner, "
                             f"got {type(b).__name__}")
        missing = [k for k in ("model_a", "model_b", "winner") if k not in b]
        if missing:
            raise ValueError(f"battle {i}: missing {', '.join(missing)}")
        problem = _battle_problem(b["model_a"], b["model_b"], b["winner"])
        if problem:
            raise ValueError(f"battle {i}: {problem}")
        anony = b.get("anony", True)
        if anony is None:
            anony = False  # unknown: not counted as anonymous
        elif isinstance(anony, (bool, np.bool_)) or (isinstance(anony, (int, np.integer)) and anony in (0, 1)):
            anony = bool(anony)
        else:
            raise ValueError(f"battle {i}: anony must be True or False, got {anony!r}")
        rows.append((b["model_a"], b["model_b"], _OUTCOME[b["winner"]], anony))
    return rows


@dataclass
class _Table:
    """Battles aggregated for Bradley-Terry: one row per (unordered pair, outcome) cell.

    ``models``: sorted names (M); ``pairs``: (P, 2) int model indices, first < second; ``counts``: (P, 3)
    battles per pair where the first model won / tied / the second model won; ``n``: total battles.
    """

    models: list[str]
    pairs: np.ndarray
    counts: np.ndarray
    n: int


def _table(rows: list[tuple[str, str, int, bool]]) -> _Table:
    """Aggregate checked battles into the pair x outcome count matrix (vectorised)."""
    models = sorted({r[0] for r in rows} | {r[1] for r in rows})
    if not rows:
        return _Table(models, np.zeros((0, 2), dtype=np.int64), np.zeros((0, 3), dtype=np.int64), 0)
    index = {m: i for i, m in enumerate(models)}
    ia = np.fromiter((index[r[0]] for r in rows), dtype=np.int64, count=len(rows))
    ib = np.fromiter((index[r[1]] for r in rows), dtype=np.int64, count=len(rows))
    oc = np.fromiter((r[2] for r in rows), dtype=np.int64, count=len(rows))
    lo, hi = np.minimum(ia, ib), np.maximum(ia, ib)
    oc = np.where(ia == lo, oc, 2 - oc)  # outcome seen from the pair's first (lower-index) model
    keys, pair_id = np.unique(lo * len(models) + hi, return_inverse=True)
    counts = np.bincount(pair_id * 3 + oc, minlength=len(keys) * 3).reshape(len(keys), 3)
    pairs = np.stack([keys // len(models), keys % len(models)], axis=1)
    return _Table(models, pairs, counts, len(rows))


# ----------------------------------------------------------------------------------------------------------------
# Online Elo


def online_elo(battles: Iterable[Battle | Mapping[str, Any]], *, k: float = ELO_K, scale: float = ELO_SCALE,
               base: float = ELO_BASE, init: float = ELO_INIT) -> dict[str, float]:
    """Online Elo ratings after playing ``battles`` in the order given (oldest first).

    Every model starts at ``init``. For each battle, model_a's expected score is
    ``E_a = 1 / (1 + base ** ((R_b - R_a) / scale))`` and its score ``S_a`` is 1 (model_a won), 0.5 (either
    tie) or 0 (model_b won); then ``R_a += k * (S_a - E_a)`` and ``R_b -= k * (S_a - E_a)``.
    Source: FastChat ``elo_analysis.py`` ``compute_elo`` (K=4, SCALE=400, BASE=10, INIT_RATING=1000).

    Returns ``{model: rating}`` (Elo points) for every model in ``battles``, in order of first appearance;
    ``{}`` for no battles. The result depends on the order of the battles (that is why Chatbot Arena moved to
    Bradley-Terry, :func:`bradley_terry`).

    Raises ``ValueError`` naming the battle's index for a bad battle (see the module docstring).
    """
    return _elo(_read(battles), k, scale, base, init)


def _elo(rows: list[tuple[str, str, int, bool]], k: float, scale: float, base: float,
         init: float) -> dict[str, float]:
    """Online Elo over checked battles (see :func:`online_elo`)."""
    rating: dict[str, float] = {}
    for a, b, outcome, _ in rows:
        ra = rating.setdefault(a, float(init))
        rb = rating.setdefault(b, float(init))
        expected_a = 1.0 / (1.0 + base ** ((rb - ra) / scale))
        update = k * (_SCORE_A[outcome] - expected_a)
        rating[a] = ra + update
        rating[b] = rb - update
    return rating


# ----------------------------------------------------------------------------------------------------------------
# Bradley-Terry


def _bt_loss_and_grad(flat_theta: np.ndarray, pairs: np.ndarray, wins_first: np.ndarray, wins_second: np.ndarray,
                      prior: float) -> tuple[float, np.ndarray]:
    """Penalised negative log-likelihood of R independent Bradley-Terry fits, summed, and its gradient.

    ``flat_theta``: (R*M,) log-strengths (natural log-odds units), fit r's in row r of the (R, M) view;
    ``pairs``: (P, 2) model indices; ``wins_first``, ``wins_second``: (R, P) wins of each side of each pair,
    a tie counting half to each. ``P(first beats second) = sigmoid(theta_first - theta_second)``.
    The fits share no parameter, so minimising the sum minimises each one (one optimiser call for all the
    bootstrap rounds instead of one per round).
    """
    rounds = wins_first.shape[0]
    theta = flat_theta.reshape(rounds, -1)
    n_models = theta.shape[1]
    d = theta[:, pairs[:, 0]] - theta[:, pairs[:, 1]]  # (R, P)
    # -[w log sigmoid(d) + l log sigmoid(-d)], with -log sigmoid(x) = log(1 + e^-x) computed stably
    loss = float(np.sum(wins_first * np.logaddexp(0.0, -d)) + np.sum(wins_second * np.logaddexp(0.0, d)))
    g_pair = (wins_first + wins_second) * expit(d) - wins_first  # d loss / d d, (R, P)
    offset = (np.arange(rounds) * n_models)[:, None]
    size = rounds * n_models
    grad = (np.bincount((offset + pairs[:, 0]).ravel(), weights=g_pair.ravel(), minlength=size)
            - np.bincount((offset + pairs[:, 1]).ravel(), weights=g_pair.ravel(), minlength=size))
    loss += 0.5 * prior * float(np.dot(flat_theta, flat_theta))
    grad += prior * flat_theta
    return loss, grad


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Run scipy's L-BFGS-B with one BLAS thread (``threadpoolctl``), then give back the previous thread count.

    L-BFGS-B calls BLAS on vectors and matrices of a few hundred numbers, where OpenBLAS's thread pool costs
    far more than it saves: measured here, a Bradley-Terry bootstrap took 10x the CPU time and up to 40x the
    wall time with the default thread count (one per core) than with one.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _fit_bt(n_models: int, pairs: np.ndarray, counts: np.ndarray, x0: np.ndarray | None = None) -> np.ndarray:
    """Log-strengths that minimise :func:`_bt_loss_and_grad`, each fit centred on zero.

    ``counts``: (P, 3) for one fit -> (M,), or (R, P, 3) for R fits at once -> (R, M). ``x0``: (M,) start.
    """
    single = counts.ndim == 2
    counts = counts.astype(np.float64).reshape(-1, *counts.shape[-2:])
    rounds = counts.shape[0]
    wins_first = counts[:, :, 0] + 0.5 * counts[:, :, 1]
    wins_second = counts[:, :, 2] + 0.5 * counts[:, :, 1]
    start = np.zeros(rounds * n_models) if x0 is None else np.tile(x0, rounds)
    with _one_blas_thread():
        result = minimize(_bt_loss_and_grad, start, args=(pairs, wins_first, wins_second, BT_PRIOR), jac=True,
                          method="L-BFGS-B", options={"maxiter": 10_000, "gtol": 1e-9, "ftol": 1e-15})
    theta = result.x.reshape(rounds, n_models)
    theta = theta - theta.mean(axis=1, keepdims=True)  # the prior already centres it; this removes the residue
    return theta[0] if single else theta


def _to_elo(theta: np.ndarray, scale: float, base: float, init: float) -> np.ndarray:
    """Log-strengths (natural units) -> Elo points: ``init + scale * theta / ln(base)``."""
    return init + theta * (scale / math.log(base))


def bradley_terry(battles: Iterable[Battle | Mapping[str, Any]], *, scale: float = ELO_SCALE,
                  base: float = ELO_BASE, init: float = ELO_INIT) -> dict[str, float]:
    """Bradley-Terry ratings by maximum likelihood, in Elo points.

    Model: ``P(i beats j) = 1 / (1 + base ** ((R_j - R_i) / scale))``. Each tie counts as half a win for each
    side (FastChat ``bt_loss_and_grad``: outcome 0.5 in the logistic log-likelihood). The battles are first
    aggregated into a (pair x outcome) count matrix, then the logistic log-likelihood is maximised with scipy's
    L-BFGS-B (FastChat ``rating_systems.py`` ``compute_bt``/``fit_bt``), with the weak prior
    :data:`BT_PRIOR` that keeps the fit unique when a model is undefeated or the battles fall into groups that
    never met. The order of the battles does not matter.

    Anchoring: the mean of the returned ratings is ``init`` (FastChat instead pins its baseline model,
    mixtral-8x7b-instruct-v0.1, at 1114, a model this studio does not have). Only differences are meaningful:
    ``R_i - R_j = scale * log_base(odds that i beats j)``.

    Returns ``{model: rating}`` for every model in ``battles``, best first (ties by name); ``{}`` for none.
    Raises ``ValueError`` naming the battle's index for a bad battle (see the module docstring).
    """
    table = _table(_read(battles))
    if not table.models:
        return {}
    elo = _to_elo(_fit_bt(len(table.models), table.pairs, table.counts), scale, base, init)
    return _best_first(dict(zip(table.models, elo.tolist())))


def _best_first(ratings: dict[str, float]) -> dict[str, float]:
    """The same dict ordered by rating, highest first, ties by name."""
    return {m: ratings[m] for m in sorted(ratings, key=lambda m: (-ratings[m], m))}


def _bootstrap_ratings(table: _Table, rounds: int, seed: int, scale: float, base: float,
                       init: float) -> np.ndarray:
    """(rounds, M) Bradley-Terry ratings (Elo points), one row per bootstrap resample of the battles."""
    rng = np.random.default_rng(seed)
    flat = table.counts.reshape(-1)
    # Resampling the n battles with replacement and aggregating them again gives cell counts that follow
    # Multinomial(n, counts / n): draw those directly (FastChat compute_bootstrap_bt does the same).
    resampled = rng.multinomial(table.n, flat / table.n, size=rounds).reshape(rounds, *table.counts.shape)
    start = _fit_bt(len(table.models), table.pairs, table.counts)  # warm start: each resample is close to it
    thetas = _fit_bt(len(table.models), table.pairs, resampled, start)
    return _to_elo(thetas, scale, base, init)


def bootstrap_intervals(battles: Iterable[Battle | Mapping[str, Any]], *, rounds: int = 100,
                        seed: int = 0) -> dict[str, tuple[float, float]]:
    """95% bootstrap intervals of the Bradley-Terry ratings, in Elo points.

    ``rounds`` times, resample the battles with replacement (as many as there are), refit
    :func:`bradley_terry` (default scale, base and init; each resample anchored at mean ``ELO_INIT``), and take
    each model's 2.5 and 97.5 percentiles (numpy's linear interpolation) over the rounds. Source: FastChat
    ``compute_bootstrap_bt`` and ``elo_analysis.py`` (``bootstrap_df.quantile(0.025/0.975)``).

    The resamples are drawn from ``numpy.random.default_rng(seed)`` as multinomial counts over the (pair x
    outcome) cells, which has exactly the distribution of resampling battles and counting them again; the
    same battles, ``rounds`` and ``seed`` give the same intervals. A model absent from a resample gets
    ``ELO_INIT`` in it (the prior's pull; likely only for a model with a handful of battles).

    Returns ``{model: (lo, hi)}`` for every model in ``battles``, ordered by name; ``{}`` for no battles.
    Raises ``ValueError`` for ``rounds`` not a whole number >= 1, and naming the battle's index for a bad
    battle (see the module docstring).
    """
    rounds = _check_count("rounds", rounds, minimum=1)
    table = _table(_read(battles))
    if not table.models:
        return {}
    boot = _bootstrap_ratings(table, rounds, seed, ELO_SCALE, ELO_BASE, ELO_INIT)
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    return {m: (float(lo[i]), float(hi[i])) for i, m in enumerate(table.models)}


def _check_count(name: str, value: Any, *, minimum: int) -> int:
    """``value`` as an int >= minimum, or ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------------------------------------------
# Ranks, counts, win rates


def ranks_from_intervals(ratings: dict[str, float], intervals: dict[str, tuple[float, float]]) -> dict[str, int]:
    """Arena ranks from confidence intervals: rank = 1 + the number of models whose lower bound is above
    (strictly) this model's upper bound. Source: FastChat ``elo_analysis.py`` ("compute ranking based on CI").

    ``ratings``: ``{model: rating}`` (which models to rank; the values order the result); ``intervals``:
    ``{model: (lo, hi)}`` for at least those models, same units. Models whose intervals overlap share a rank,
    and a model can rank ahead of one with a higher rating when its interval is wider.

    Returns ``{model: rank}`` for the models of ``ratings``, best rating first (ties by name).
    Raises ``ValueError`` naming the model when it has no interval or its interval has lo > hi.
    """
    for m in ratings:
        if m not in intervals:
            raise ValueError(f"model {m!r} has a rating but no interval")
        lo, hi = intervals[m]
        if not lo <= hi:
            raise ValueError(f"model {m!r}: interval lower bound {lo!r} is above its upper bound {hi!r}")
    order = sorted(ratings, key=lambda m: (-ratings[m], m))
    lows = np.array([intervals[m][0] for m in order], dtype=np.float64)
    return {m: 1 + int(np.sum(lows > intervals[m][1])) for m in order}


def pair_counts(battles: Iterable[Battle | Mapping[str, Any]]) -> dict[tuple[str, str], int]:
    """Battles per model pair, whichever side each model was on.

    Returns ``{(name1, name2): count}`` with ``name1 < name2``, ordered by pair; pairs that never met are
    absent. Source: FastChat ``elo_analysis.py`` ``visualize_battle_count`` (``ptbl + ptbl.T``).
    Raises ``ValueError`` naming the battle's index for a bad battle (see the module docstring).
    """
    table = _table(_read(battles))
    totals = table.counts.sum(axis=1)
    return {(table.models[i], table.models[j]): int(n) for (i, j), n in zip(table.pairs.tolist(), totals)}


def win_rate_matrix(battles: Iterable[Battle | Mapping[str, Any]]) -> tuple[list[str], list[list[float | None]]]:
    """Pairwise win rates: the fraction of their battles that the row model won against the column model.

    ``P[i][j] = (wins of i over j + ties between them / 2) / battles between them``, whichever side each was
    on, so ``P[i][j] + P[j][i] = 1``; ``None`` where the two never met and on the diagonal. Source: FastChat
    ``elo_analysis.py`` ``compute_pairwise_win_fraction`` (which leaves ties out; here a tie is half a win,
    as in the ratings).

    Returns ``(models, P)``: the M model names, ordered by their average win rate over the models they met
    (highest first, ties by name, as FastChat orders its heat map), and the M x M matrix as nested lists in
    that order. ``([], [])`` for no battles.
    Raises ``ValueError`` naming the battle's index for a bad battle (see the module docstring).
    """
    table = _table(_read(battles))
    m = len(table.models)
    score = np.zeros((m, m))
    games = np.zeros((m, m))
    if len(table.pairs):
        i, j = table.pairs[:, 0], table.pairs[:, 1]
        c = table.counts.astype(np.float64)
        score[i, j] = c[:, 0] + 0.5 * c[:, 1]
        score[j, i] = c[:, 2] + 0.5 * c[:, 1]
        games[i, j] = games[j, i] = c.sum(axis=1)
    met = games > 0
    rate = np.divide(score, games, out=np.zeros_like(score), where=met)
    average = np.divide((rate * met).sum(axis=1), met.sum(axis=1), out=np.zeros(m), where=met.any(axis=1))
    order = sorted(range(m), key=lambda r: (-average[r], table.models[r]))
    matrix = [[float(rate[r, c]) if met[r, c] else None for c in order] for r in order]
    return [table.models[r] for r in order], matrix


# ----------------------------------------------------------------------------------------------------------------
# Leaderboard


def leaderboard(battles: Iterable[Battle | Mapping[str, Any]], *, anony_only: bool = False, bootstrap: int = 100,
                seed: int = 0) -> list[LeaderboardRow]:
    """The Arena leaderboard: one :class:`LeaderboardRow` per model, best Bradley-Terry rating first.

    Every battle is checked first (the index in errors is the position in ``battles``, before filtering); then
    with ``anony_only`` only anonymous battles count (Chatbot Arena's leaderboard uses only those). Per model:
    online Elo (:func:`online_elo`, battles in the order given, oldest first), Bradley-Terry rating
    (:func:`bradley_terry`, mean ``ELO_INIT``), its 95% bootstrap interval over ``bootstrap`` rounds from
    ``seed`` (:func:`bootstrap_intervals`), the rank from the intervals (:func:`ranks_from_intervals`), and its
    battles, wins, ties and losses. With ``bootstrap=0`` no resampling is done: the interval is the rating
    itself, and the rank is 1 + the number of models rated strictly higher.

    Returns ``[]`` when no battle counts. Ratings are floats in Elo points (round for display).
    Raises ``ValueError`` naming the battle's index for a bad battle, and for ``bootstrap`` not a whole
    number >= 0.
    """
    rounds = _check_count("bootstrap", bootstrap, minimum=0)
    rows = _read(battles)
    if anony_only:
        rows = [r for r in rows if r[3]]
    if not rows:
        return []
    elo = _elo(rows, ELO_K, ELO_SCALE, ELO_BASE, ELO_INIT)
    table = _table(rows)
    n_models = len(table.models)
    bt = _to_elo(_fit_bt(n_models, table.pairs, table.counts), ELO_SCALE, ELO_BASE, ELO_INIT)
    if rounds:
        lo, hi = np.percentile(_bootstrap_ratings(table, rounds, seed, ELO_SCALE, ELO_BASE, ELO_INIT),
                               [2.5, 97.5], axis=0)
    else:
        lo, hi = bt, bt
    ratings = dict(zip(table.models, bt.tolist()))
    ranks = ranks_from_intervals(ratings, {m: (float(lo[i]), float(hi[i])) for i, m in enumerate(table.models)})

    first, second, c = table.pairs[:, 0], table.pairs[:, 1], table.counts

    def per_model(for_first: np.ndarray, for_second: np.ndarray) -> np.ndarray:
        return (np.bincount(first, for_first, n_models) + np.bincount(second, for_second, n_models)).astype(int)

    wins, ties, losses = per_model(c[:, 0], c[:, 2]), per_model(c[:, 1], c[:, 1]), per_model(c[:, 2], c[:, 0])

    index = {m: i for i, m in enumerate(table.models)}
    out = []
    for m in ranks:  # best Bradley-Terry rating first, ties by name
        i = index[m]
        out.append(LeaderboardRow(rank=ranks[m], model=m, elo=float(elo[m]), bt=float(bt[i]), bt_lo=float(lo[i]),
                                  bt_hi=float(hi[i]), battles=int(wins[i] + ties[i] + losses[i]),
                                  wins=int(wins[i]), ties=int(ties[i]), losses=int(losses[i])))
    return out
