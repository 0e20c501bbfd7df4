"""The Arena leaderboard's ratings (studio/arena.py): online Elo worked by hand, Bradley-Terry recovering known
strengths, bootstrap interval coverage, ranks from intervals, battle counts, win rates, the leaderboard, and
input errors. Pure and fast: no store, no model, no page."""

from __future__ import annotations

import math

import numpy as np
import pytest

from studio import arena
from studio.arena import Battle, LeaderboardRow

# Known strengths (Elo points) for the simulations, 100 points apart.
TRUE = {"alpaca": 1150.0, "vicuna": 1050.0, "wizard": 950.0, "koala": 850.0}
TIE_RATE = 0.1


def simulate(true: dict[str, float], n: int, rng: np.random.Generator) -> list[dict]:
    """``n`` battles between random pairs of ``true``'s models, with outcomes drawn so that model_a's expected
    score (win 1, tie 1/2) is the Elo/Bradley-Terry probability ``1 / (1 + 10 ** ((R_b - R_a) / 400))``:
    a tie with probability TIE_RATE (half of them "tie (bothbad)"), otherwise model_a wins with probability
    ``(p - TIE_RATE / 2) / (1 - TIE_RATE)``. Ties counted as half a win then leave the true ratings unbiased."""
    names = list(true)
    out = []
    for _ in range(n):
        i, j = rng.choice(len(names), size=2, replace=False)
        a, b = names[i], names[j]
        p = 1.0 / (1.0 + 10.0 ** ((true[b] - true[a]) / 400.0))
        u = rng.random()
        if u < TIE_RATE:
            winner = "tie" if u < TIE_RATE / 2 else "tie (bothbad)"
        else:
            winner = "model_a" if rng.random() < (p - TIE_RATE / 2) / (1 - TIE_RATE) else "model_b"
        out.append({"model_a": a, "model_b": b, "winner": winner, "anony": True})
    return out


def anchored(true: dict[str, float]) -> dict[str, float]:
    """The true ratings on the scale the fit reports: mean ELO_INIT."""
    mean = sum(true.values()) / len(true)
    return {m: r - mean + arena.ELO_INIT for m, r in true.items()}


# --------------------------------------------------------------------------------------------------------------
# Online Elo


HAND_BATTLES = [
    Battle("A", "B", "model_a"),
    Battle("B", "C", "tie"),
    Battle("C", "A", "model_b"),
    Battle("A", "C", "tie (bothbad)"),
    Battle("B", "A", "model_a"),
]
# Worked by hand (K=4, scale 400, base 10, everyone starts at 1000; E_a = 1 / (1 + 10^((R_b - R_a) / 400)),
# S_a = 1 win / 0.5 tie / 0 loss, update = 4 (S_a - E_a), R_a += update, R_b -= update):
#
# | # | a vs b | winner        | R_a - R_b | E_a            | S_a | update          | A, B, C after              |
# |---|--------|---------------|-----------|----------------|-----|-----------------|----------------------------|
# | 1 | A vs B | model_a       |  0        | 0.500000000000 | 1   | +2.000000000000 | A 1002.000000000000        |
# |   |        |               |           |                |     |                 | B  998.000000000000        |
# | 2 | B vs C | tie           | -2        | 0.497121800425 | 0.5 | +0.011512798299 | B  998.011512798299        |
# |   |        |               |           |                |     |                 | C  999.988487201701        |
# | 3 | C vs A | model_b       | -2.011513 | 0.497105232729 | 0   | -1.988420930915 | C  998.000066270786        |
# |   |        |               |           |                |     |                 | A 1003.988420930915        |
# | 4 | A vs C | tie (bothbad) | +5.988355 | 0.508617081817 | 0.5 | -0.034468327269 | A 1003.953952603646        |
# |   |        |               |           |                |     |                 | C  998.034534598055        |
# | 5 | B vs A | model_a       | -5.942440 | 0.491448975495 | 1   | +2.034204098022 | B 1000.045716896321        |
# |   |        |               |           |                |     |                 | A 1001.919748505625        |
#
# (e.g. row 2: 10^(2/400) = 1.011579454, E_a = 1 / 2.011579454 = 0.497121800; update = 4 (0.5 - 0.497121800).)
HAND_AFTER = [
    {"A": 1002.000000000000, "B": 998.000000000000},
    {"A": 1002.000000000000, "B": 998.011512798299, "C": 999.988487201701},
    {"A": 1003.988420930915, "B": 998.011512798299, "C": 998.000066270786},
    {"A": 1003.953952603646, "B": 998.011512798299, "C": 998.034534598055},
    {"A": 1001.919748505625, "B": 1000.045716896321, "C": 998.034534598055},
]


def test_online_elo_matches_the_hand_computation_battle_by_battle():
    for n, expected in enumerate(HAND_AFTER, start=1):
        got = arena.online_elo(HAND_BATTLES[:n])
        assert list(got) == list(expected)  # models in order of first appearance
        for model, rating in expected.items():
            assert got[model] == pytest.approx(rating, abs=1e-9), (n, model)
    # Elo is zero-sum: the points stay at 3 x 1000
    assert sum(arena.online_elo(HAND_BATTLES).values()) == pytest.approx(3000.0, abs=1e-9)


def test_online_elo_depends_on_order_and_takes_its_constants():
    reversed_ = arena.online_elo(list(reversed(HAND_BATTLES)))
    assert reversed_["A"] != pytest.approx(HAND_AFTER[-1]["A"], abs=1e-6)
    # K=32, one win from equal ratings: +16 / -16; a different init shifts everything
    assert arena.online_elo([HAND_BATTLES[0]], k=32, init=1500) == {"A": 1516.0, "B": 1484.0}
    assert arena.online_elo([]) == {}


# --------------------------------------------------------------------------------------------------------------
# Bradley-Terry


def test_bradley_terry_recovers_known_strengths():
    # 2,000 battles among 4 models, ~330 per pair: the standard error of a fitted gap is about 15 points, so
    # 30 points is about two of them. Over 150 simulation seeds the order held every time, each model's gap to
    # the field's mean was within 30 every time, the gaps between neighbours in 95% of them.
    battles = simulate(TRUE, 2000, np.random.default_rng(7))
    fit = arena.bradley_terry(battles)
    assert list(fit) == list(TRUE)  # best first, in the true order
    assert sum(fit.values()) / len(fit) == pytest.approx(arena.ELO_INIT, abs=1e-6)  # anchoring: the mean
    truth = anchored(TRUE)
    for model in TRUE:
        assert abs(fit[model] - truth[model]) < 30, (model, fit[model], truth[model])
    names = list(TRUE)
    for better, worse in zip(names, names[1:]):
        gap = fit[better] - fit[worse]
        assert abs(gap - (TRUE[better] - TRUE[worse])) < 30, (better, worse, gap)


def test_bradley_terry_two_models_equals_the_closed_form():
    # A beats B 30 times, B beats A 10 times, 8 ties (4 each side): the maximum likelihood has
    # P(A beats B) = (30 + 4) / 48, so the gap is 400 log10(34 / 14), whatever side each was on.
    battles = ([Battle("A", "B", "model_a")] * 20 + [Battle("B", "A", "model_b")] * 10
               + [Battle("B", "A", "model_a")] * 10 + [Battle("A", "B", "tie")] * 4
               + [Battle("B", "A", "tie (bothbad)")] * 4)
    fit = arena.bradley_terry(battles)
    gap = 400 * math.log10(34 / 14)
    assert fit["A"] - fit["B"] == pytest.approx(gap, abs=0.01)  # the prior (BT_PRIOR) costs < 0.01 point here
    assert fit["A"] == pytest.approx(1000 + gap / 2, abs=0.01)
    # a 3-1 record: BT_PRIOR's documented pull of about 0.13 point
    small = arena.bradley_terry([Battle("A", "B", "model_a")] * 3 + [Battle("A", "B", "model_b")])
    assert 0.05 < 400 * math.log10(3) - (small["A"] - small["B"]) < 0.2
    # another scale and base: the same odds, in other units
    assert arena.bradley_terry(battles, scale=1, base=math.e, init=0)["A"] == pytest.approx(
        math.log(34 / 14) / 2, abs=1e-4)


def test_bradley_terry_stays_finite_when_the_maximum_likelihood_does_not_exist():
    undefeated = arena.bradley_terry([Battle("A", "B", "model_a"), Battle("A", "C", "model_a"),
                                      Battle("B", "C", "tie")])
    assert all(math.isfinite(r) for r in undefeated.values())
    assert list(undefeated) == ["A", "B", "C"] and undefeated["A"] - undefeated["B"] > 400
    assert undefeated["B"] == pytest.approx(undefeated["C"], abs=1e-6)
    # two groups that never met: each group centred, the whole mean at ELO_INIT
    split = arena.bradley_terry([Battle("A", "B", "model_a"), Battle("A", "B", "model_b"),
                                 Battle("C", "D", "model_a"), Battle("C", "D", "model_a"),
                                 Battle("C", "D", "model_b")])
    assert split["A"] == pytest.approx(1000, abs=1e-6) and split["B"] == pytest.approx(1000, abs=1e-6)
    assert split["C"] + split["D"] == pytest.approx(2000, abs=1e-6) and split["C"] > split["D"]
    assert arena.bradley_terry([]) == {}


def test_bootstrap_fits_all_rounds_at_once_as_if_one_by_one():
    # the bootstrap minimises the sum of the rounds' losses in one optimiser call; it must give each
    # round's own fit
    battles = simulate(TRUE, 300, np.random.default_rng(3))
    table = arena._table(arena._read(battles))
    resampled = np.random.default_rng(0).multinomial(
        table.n, table.counts.reshape(-1) / table.n, size=8).reshape(8, *table.counts.shape)
    together = arena._fit_bt(len(table.models), table.pairs, resampled)
    one_by_one = np.stack([arena._fit_bt(len(table.models), table.pairs, c) for c in resampled])
    assert np.abs(together - one_by_one).max() * 400 / math.log(10) < 0.01


# --------------------------------------------------------------------------------------------------------------
# Bootstrap intervals


def test_bootstrap_intervals_cover_the_true_ratings():
    # 20 simulations x 4 models = 80 chances. Measured over 15 other sets of 20 seeds: 71 to 77 covered
    # (about 92%: percentiles read off 100 rounds are a little narrow; with 1,000 rounds, 94.5% of 400).
    truth = anchored(TRUE)
    covered = total = 0
    widths = []
    for rep in range(20):
        battles = simulate(TRUE, 1000, np.random.default_rng(1000 + rep))
        intervals = arena.bootstrap_intervals(battles, rounds=100, seed=rep)
        assert set(intervals) == set(TRUE)
        for model, (lo, hi) in intervals.items():
            assert lo < hi
            covered += lo <= truth[model] <= hi
            total += 1
            widths.append(hi - lo)
    assert total == 80
    assert covered >= 0.85 * total, f"95% intervals covered the true rating {covered} times out of {total}"
    # and they are informative, not trivially wide (about +-2 standard errors of ~15 points)
    assert 20 < float(np.median(widths)) < 120


def test_bootstrap_intervals_are_seeded_and_checked():
    battles = simulate(TRUE, 400, np.random.default_rng(5))
    first = arena.bootstrap_intervals(battles, rounds=30, seed=11)
    assert arena.bootstrap_intervals(battles, rounds=30, seed=11) == first
    assert arena.bootstrap_intervals(battles, rounds=30, seed=12) != first
    assert list(first) == sorted(TRUE)
    fit = arena.bradley_terry(battles)
    for model, (lo, hi) in first.items():
        assert lo < fit[model] < hi
    for bad in (0, -1, 2.5, "100", True):
        with pytest.raises(ValueError, match="rounds"):
            arena.bootstrap_intervals(battles, rounds=bad)
    assert arena.bootstrap_intervals([], rounds=10) == {}


# --------------------------------------------------------------------------------------------------------------
# Ranks, counts, win rates


def test_ranks_from_intervals_hand_example():
    ratings = {"A": 1100, "B": 1090, "C": 1000, "D": 990, "E": 900}
    intervals = {"A": (1080, 1120), "B": (1070, 1110), "C": (980, 1020), "D": (900, 1075), "E": (880, 980)}
    # A: nobody's lower bound is above 1120 -> 1.  B: none above 1110 -> 1.
    # C: A (1080) and B (1070) are above 1020 -> 3.  D: only A (1080) is above 1075 -> 2 (ahead of C: its
    # interval is wider).  E: upper bound 980: A, B above; C's lower bound 980 is not *above* 980 -> 3.
    assert arena.ranks_from_intervals(ratings, intervals) == {"A": 1, "B": 1, "C": 3, "D": 2, "E": 3}
    assert list(arena.ranks_from_intervals(ratings, intervals)) == ["A", "B", "C", "D", "E"]
    # without uncertainty it is the usual ranking with shared places
    points = {"A": 3.0, "B": 2.0, "C": 2.0, "D": 1.0}
    assert arena.ranks_from_intervals(points, {m: (r, r) for m, r in points.items()}) == {
        "A": 1, "B": 2, "C": 2, "D": 4}
    with pytest.raises(ValueError, match="'E' has a rating but no interval"):
        arena.ranks_from_intervals(ratings, {m: v for m, v in intervals.items() if m != "E"})
    with pytest.raises(ValueError, match="'A'.*above its upper bound"):
        arena.ranks_from_intervals(ratings, {**intervals, "A": (1130, 1120)})


WIN_RATE_BATTLES = [
    Battle("A", "B", "model_a"), Battle("B", "A", "model_b"), Battle("A", "B", "model_b"),  # A-B: 2-1
    Battle("A", "B", "tie"),                                                                # + a tie
    Battle("C", "A", "model_a"), Battle("A", "C", "tie (bothbad)"),                         # C-A: 1-0, a tie
    Battle("D", "E", "model_a"),                                                            # D-E: 1-0
]


def test_win_rate_matrix_hand_example():
    models, matrix = arena.win_rate_matrix(WIN_RATE_BATTLES)
    # P(A beats B) = (2 + 1/2) / 4 = 0.625; P(C beats A) = (1 + 1/2) / 2 = 0.75; P(D beats E) = 1.
    # Average over the models met: D 1, C 0.75, A (0.625 + 0.25) / 2 = 0.4375, B 0.375, E 0.
    assert models == ["D", "C", "A", "B", "E"]
    n = None
    assert matrix == [
        #  D    C     A      B      E
        [n,   n,    n,     n,     1.0],   # D
        [n,   n,    0.75,  n,     n],     # C
        [n,   0.25, n,     0.625, n],     # A
        [n,   n,    0.375, n,     n],     # B
        [0.0, n,    n,     n,     n],     # E
    ]
    assert arena.win_rate_matrix([]) == ([], [])


def test_pair_counts_hand_example():
    assert arena.pair_counts(WIN_RATE_BATTLES) == {("A", "B"): 4, ("A", "C"): 2, ("D", "E"): 1}
    assert list(arena.pair_counts(WIN_RATE_BATTLES)) == [("A", "B"), ("A", "C"), ("D", "E")]
    assert arena.pair_counts([]) == {}


# --------------------------------------------------------------------------------------------------------------
# Leaderboard


def test_leaderboard_combines_the_parts_best_first():
    battles = simulate(TRUE, 2000, np.random.default_rng(21))
    rows = arena.leaderboard(battles, bootstrap=100, seed=4)
    assert all(isinstance(r, LeaderboardRow) for r in rows)
    assert [r.model for r in rows] == list(TRUE)
    fit = arena.bradley_terry(battles)
    intervals = arena.bootstrap_intervals(battles, rounds=100, seed=4)
    elo = arena.online_elo(battles)
    ranks = arena.ranks_from_intervals(fit, intervals)
    for r in rows:
        assert r.bt == pytest.approx(fit[r.model], abs=1e-9)
        assert (r.bt_lo, r.bt_hi) == pytest.approx(intervals[r.model], abs=1e-9)
        assert r.elo == pytest.approx(elo[r.model], abs=1e-9)
        assert r.rank == ranks[r.model]
        mine = [b for b in battles if r.model in (b["model_a"], b["model_b"])]
        wins = sum((b["winner"] == "model_a") == (b["model_a"] == r.model) and not b["winner"].startswith("tie")
                   for b in mine)
        ties = sum(b["winner"].startswith("tie") for b in mine)
        assert (r.battles, r.wins, r.ties, r.losses) == (len(mine), wins, ties, len(mine) - wins - ties)
    assert [r.rank for r in rows] == [1, 2, 3, 4]  # 100 points apart on 2,000 battles: all distinct
    assert sum(r.battles for r in rows) == 2 * len(battles)


def test_leaderboard_anony_only_and_no_bootstrap():
    named = [{"model_a": "gpt", "model_b": "A", "winner": "model_a", "anony": False}] * 5
    battles = [dict(b.__dict__) for b in HAND_BATTLES] + named
    everyone = arena.leaderboard(battles, bootstrap=20)
    assert {r.model for r in everyone} == {"A", "B", "C", "gpt"}
    anonymous = arena.leaderboard(battles, anony_only=True, bootstrap=20)
    assert {r.model for r in anonymous} == {"A", "B", "C"}
    assert {r.model: r.elo for r in anonymous} == pytest.approx(HAND_AFTER[-1], abs=1e-9)
    assert sum(r.battles for r in anonymous) == 2 * len(HAND_BATTLES)
    # bootstrap=0: intervals collapse on the rating and ranks follow the ratings
    plain = arena.leaderboard(battles, bootstrap=0)
    assert all(r.bt_lo == r.bt == r.bt_hi for r in plain)
    assert [r.rank for r in plain] == [1, 2, 3, 4] and plain[0].model == "gpt"
    assert arena.leaderboard([], bootstrap=10) == []
    assert arena.leaderboard(named, anony_only=True) == []
    with pytest.raises(ValueError, match="bootstrap"):
        arena.leaderboard(battles, bootstrap=-1)


def test_dicts_and_battle_objects_are_accepted_alike():
    objects = HAND_BATTLES + WIN_RATE_BATTLES
    dicts = [{"model_a": b.model_a, "model_b": b.model_b, "winner": b.winner, "anony": b.anony} for b in objects]
    mixed = [d if i % 2 else b for i, (b, d) in enumerate(zip(objects, dicts))]
    for fn in (arena.online_elo, arena.bradley_terry, arena.pair_counts, arena.win_rate_matrix,
               lambda bs: arena.bootstrap_intervals(bs, rounds=20, seed=1),
               lambda bs: arena.leaderboard(bs, bootstrap=20, seed=1)):
        expected = fn(objects)
        assert fn(dicts) == expected
        assert fn(mixed) == expected
        assert fn(iter(dicts)) == expected  # any iterable, read once
    # a dict without anony counts as anonymous (Battle's default); anony=None (unknown) does not
    bare = [{"model_a": "A", "model_b": "B", "winner": "model_a"}]
    assert [r.model for r in arena.leaderboard(bare, anony_only=True, bootstrap=0)] == ["A", "B"]
    assert arena.leaderboard([{**bare[0], "anony": None}], anony_only=True, bootstrap=0) == []


# --------------------------------------------------------------------------------------------------------------
# Input errors


@pytest.mark.parametrize("fn", [arena.online_elo, arena.bradley_terry, arena.bootstrap_intervals,
                                arena.pair_counts, arena.win_rate_matrix, arena.leaderboard])
def test_bad_battles_name_the_value_and_the_index(fn):
    good = {"model_a": "A", "model_b": "B", "winner": "model_a"}
    with pytest.raises(ValueError, match=r"battle 2: winner 'draw' is not one of 'model_a', 'model_b', "
                                         r"'tie', 'tie \(bothbad\)'"):
        fn([good, good, {**good, "winner": "draw"}])
    with pytest.raises(ValueError, match=r"battle 1: model_a and model_b are both 'A' \(a model cannot battle "
                                         r"itself\)"):
        fn([good, {**good, "model_b": "A"}])
    with pytest.raises(ValueError, match="battle 0: missing winner"):
        fn([{"model_a": "A", "model_b": "B"}])
    with pytest.raises(ValueError, match="battle 1: model_b must be a non-empty model name, got ''"):
        fn([good, {**good, "model_b": ""}])
    with pytest.raises(ValueError, match="battle 0: anony must be True or False, got 'yes'"):
        fn([{**good, "anony": "yes"}])
    with pytest.raises(ValueError, match="battle 1: expected a Battle or a dict"):
        fn([good, ("A", "B", "model_a")])
    with pytest.raises(ValueError, match="must be a list"):
        fn(good)


def test_bad_battle_objects_are_refused_when_made():
    with pytest.raises(ValueError, match="winner 'Model_A' is not one of"):
        Battle("A", "B", "Model_A")
    with pytest.raises(ValueError, match="both 'A'"):
        Battle("A", "A", "tie")
    with pytest.raises(ValueError, match="anony must be True or False"):
        Battle("A", "B", "tie", anony="no")
    # a bad battle among anonymous-only filtering is still refused (checked before filtering)
    with pytest.raises(ValueError, match="battle 1: winner 'x'"):
        arena.leaderboard([{"model_a": "A", "model_b": "B", "winner": "model_a"},
                           {"model_a": "A", "model_b": "B", "winner": "x", "anony": False}], anony_only=True)


def test_fits_give_back_the_blas_thread_count(monkeypatch):
    # the fits run BLAS on one thread (arena._one_blas_thread, threadpoolctl) and restore the setting after
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads() -> set[int]:
        return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

    if not blas_threads():
        pytest.skip("no BLAS library is loaded for threadpoolctl to see")
    seen = []
    real = arena._bt_loss_and_grad

    def spy(*args):
        seen.append(blas_threads())
        return real(*args)

    monkeypatch.setattr(arena, "_bt_loss_and_grad", spy)
    with threadpool_limits(limits=2, user_api="blas"):
        arena.leaderboard(HAND_BATTLES, bootstrap=10)
        assert seen and all(s == {1} for s in seen)
        assert blas_threads() == {2}
