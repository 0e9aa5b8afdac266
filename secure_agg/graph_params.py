"""Choosing the neighbour degree k and the Shamir threshold t (Bell et al. 2020).

:func:`choose_parameters` follows the structure of the analysis in Bell, Bonawitz, Gascón,
Lepoint and Raykova, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead"
(CCS 2020), as Google's ``fcp/secagg/server/graph_parameter_finder`` implements it for a
Harary graph. We re-derived and evaluated the bounds ourselves (this is not a copy of a
published table): union bounds over clients, evaluated numerically in float64 (binomial
and hypergeometric probabilities from ``math.lgamma`` and a log-ratio recurrence).

It returns the *cheapest* graph that meets the targets. A client's cost is ``O(k d)`` PRG
work and ``k`` shares, so cheapest means the smallest degree ``k``; the complete graph
(``k = n - 1``, classic SecAgg) is just the last candidate, taken only when no smaller ``k``
qualifies. Every rule below moves by small steps with ``n``, so the chosen ``k``, and with it
the cost of a round, grows smoothly with the cohort: there is no size at which the graph
switches regime. (A fixed switch to the complete graph up to ``n = 100`` once made a cohort
of 100 use ``k = 99, t = 53`` and one of 103 use ``k = 26``.)

Model. Each client drops out of the round with probability ``δ`` (``dropout_rate``) and is
corrupt with probability ``γ`` (``corrupt_rate``), independently of the other clients and of
the graph (the graph seed depends on keys drawn after the cohort is fixed). So the dropped
count is ``Binomial(n, δ)``, not a fixed ``floor(δ n)``: a fixed count is 0 for every cohort
below ``1/δ`` and would let a ring (``k = 2``) pass at ``n = 8``, while real agents drop out.
Targets: security ``2**-40`` (``SECURITY_BITS``), correctness ``2**-20``
(``CORRECTNESS_BITS``). For even ``k`` from 2 below ``n - 1``, then ``k = n - 1``, accept the
first ``k`` for which all of these hold, with the threshold of rule 2:

1. *Connectivity* (the server learns only the full sum, not a partial sum of a cut-off
   group). On a Harary graph the honest survivors stay connected unless two disjoint runs
   of ``k/2`` consecutive clients are all bad (corrupt, or dropped): ``n (n - k - 1) / 2``
   placements, each with probability at most ``(γ + δ)**k``, as each client is bad with
   probability at most ``γ + δ``, independently. Require the sum below ``2**-41``. The
   complete graph has no cut.
2. *Privacy of each client's masks* against a server that lies about dropouts: ``t`` is
   :func:`~secure_agg.threshold.required_threshold`, the rule every client also checks
   (``2t > k + c`` for ``c`` assumed corrupt neighbours; derived in
   :mod:`secure_agg.threshold`). Degrees for which it exceeds ``k`` are skipped. ``t`` is
   never lowered below it (clients would refuse it), and never raised: a larger ``t`` only
   makes rule 3 harder. That rule counts ``A = floor(γ n)`` corrupt clients, an assumption
   on the adversary's reach stated by the deployment; below ``n = 1/γ`` it is 0 and ``t``
   still satisfies ``2t > k``, so the server alone learns nothing.
3. *Correctness*: every surviving client keeps at least ``t`` surviving neighbours. Its
   dropped neighbours are ``Binomial(k, δ)``; require ``n * P[more than k - t drop] <=
   2**-20``.

Where no ``k`` meets rule 3, none can: the complete graph gives each client the most
neighbours, and rule 2 fixes ``t``. That is the case of small cohorts, which cannot reach
the target at any degree (at ``δ = 0.1, γ = 0.05``: ``n <= 32``; at ``n = 8``, ``t = 4``, and
the round fails when 4 or more of the 8 drop, probability ``5e-3``). Then the graph is the complete
one, whose round survives as many dropouts as any graph can, provided it survives the
expected ``D = floor(δ n)``: ``t <= n - 1 - D``; otherwise the request is refused.

At ``δ = 0.1, γ = 0.05`` (the coordinator's defaults) this gives the complete graph up to
``n = 33`` (``k = n - 1 <= 32``), then ``k = 32`` to ``36`` up to ``n = 72``, 42 at 100 and 103,
54 at 200, 82 at 1000, 96 at 10,000: the cost per client grows like ``log n``. ``k`` is not
strictly monotone in ``n`` (as ``A = floor(γ n)`` steps, the law of the corrupt neighbours
shifts), but from ``n = 20`` on, over the rates of the table, consecutive sizes differ by at
most 20 % up and 7 % down.

Reference table (``REFERENCE_TABLE``, checked by the tests), ``(k, t)`` per row:

=========  ===========  ==========  ==========  ==========  ==========
n          dropout δ    γ = 0       γ = 0.05    γ = 0.1     γ = 0.2
=========  ===========  ==========  ==========  ==========  ==========
10         0.05         n-1, 5      n-1, 5      n-1, 6      n-1, 6
10         0.1          n-1, 5      n-1, 5      n-1, 6      n-1, 6
10         0.2          n-1, 5      n-1, 5      n-1, 6      n-1, 6
10         0.3          n-1, 5      n-1, 5      n-1, 6      n-1, 6
20         0.05         n-1, 10     n-1, 11     n-1, 11     n-1, 12
20         0.1          n-1, 10     n-1, 11     n-1, 11     n-1, 12
20         0.2          n-1, 10     n-1, 11     n-1, 11     n-1, 12
20         0.3          n-1, 10     n-1, 11     n-1, 11     n-1, 12
50         0.05         20, 11      24, 14      26, 16      36, 24
50         0.1          32, 17      36, 20      40, 23      n-1, 30
50         0.2          n-1, 25     n-1, 26     n-1, 28     n-1, 30
50         0.3          n-1, 25     n-1, 26     n-1, 28     n-1, 30
100        0.05         22, 12      28, 17      36, 24      52, 37
100        0.1          34, 18      42, 24      52, 32      70, 46
100        0.2          74, 38      86, 46      n-1, 55     n-1, 60
100        0.3          n-1, 50     n-1, 53     n-1, 55     n-1, 60
103        0.05         22, 12      28, 17      38, 25      52, 37
103        0.1          34, 18      42, 24      52, 32      70, 46
103        0.2          74, 38      86, 46      n-1, 57     n-1, 62
103        0.3          n-1, 52     n-1, 54     n-1, 57     n-1, 62
200        0.05         22, 12      38, 25      52, 37      74, 56
200        0.1          34, 18      54, 33      72, 47      104, 73
200        0.2          78, 40      106, 59     132, 77     180, 111
200        0.3          194, 98     n-1, 105    n-1, 110    n-1, 120
500        0.05         24, 13      50, 35      64, 47      88, 68
500        0.1          36, 19      74, 48      94, 64      138, 100
500        0.2          82, 42      146, 86     194, 120    302, 198
500        0.3          204, 103    310, 168    412, 232    n-1, 300
1000       0.05         24, 13      54, 38      68, 50      98, 76
1000       0.1          38, 20      82, 54      106, 73     156, 114
1000       0.2          84, 43      170, 102    226, 142    374, 250
1000       0.3          212, 107    404, 226    566, 329    934, 568
10000      0.05         26, 14      64, 45      80, 59      114, 89
10000      0.1          42, 22      96, 64      124, 86     186, 137
10000      0.2          94, 48      210, 128    284, 181    492, 334
10000      0.3          238, 120    538, 307    830, 495    2028, 1286
100000     0.05         30, 16      68, 48      88, 65      126, 98
100000     0.1          46, 24      106, 70     134, 93     204, 150
100000     0.2          104, 53     230, 140    314, 200    552, 375
100000     0.3          264, 133    604, 345    936, 559    2394, 1523
1000000    0.05         32, 17      74, 52      94, 69      134, 104
1000000    0.1          52, 27      114, 75     146, 101    222, 163
1000000    0.2          114, 58     250, 152    338, 215    600, 407
1000000    0.3          290, 146    662, 378    1016, 606   2624, 1669
=========  ===========  ==========  ==========  ==========  ==========

Limits, stated plainly: the bounds treat dropouts as independent of the graph. A server
that drops chosen clients on purpose after seeing the graph is held off the masks by rule 2
and the signed consistency check, but could cut the survivors into components and learn
partial sums; an external rate limit on declared dropouts is the defence there.

Raises :class:`~secure_agg.errors.SecAggError` (``INVALID_PARAMETERS``) for rates outside
``[0, 1)``, ``n < 3``, or targets no graph can meet (too many dropouts and corrupt clients).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from secure_agg.errors import ErrorCode, SecAggError
from secure_agg.threshold import SECURITY_BITS, required_threshold

__all__ = [
    "CORRECTNESS_BITS",
    "REFERENCE_TABLE",
    "SECURITY_BITS",
    "GraphParameters",
    "choose_parameters",
]

CORRECTNESS_BITS = 20
_EPS = 1e-12
_LOG_SECURITY = -(SECURITY_BITS + 1) * math.log(2)
_LOG_CORRECTNESS = -CORRECTNESS_BITS * math.log(2)


@dataclasses.dataclass(frozen=True)
class GraphParameters:
    """A degree (``None``: complete graph) and a threshold ``t`` on neighbour shares."""

    degree: int | None
    threshold: int

    def neighbours(self, n: int) -> int:
        """Neighbours per client in a cohort of ``n``."""
        return n - 1 if self.degree is None or self.degree >= n - 1 else self.degree


def _log_binomial_term(trials: int, rate: float, x: int) -> float:
    """Natural log of ``P[Binomial(trials, rate) = x]``, for ``0 < rate < 1``."""
    return (
        math.lgamma(trials + 1)
        - math.lgamma(x + 1)
        - math.lgamma(trials - x + 1)
        + x * math.log(rate)
        + (trials - x) * math.log1p(-rate)
    )


def _log_binomial_tail(trials: int, rate: float, at_least: int) -> float:
    """Natural log of ``P[Binomial(trials, rate) >= at_least]``, for ``0 < rate < 1``.

    The first term from ``lgamma``, the rest from the ratio
    ``P(x+1)/P(x) = (trials-x) rate / ((x+1)(1-rate))``, summed in log space.
    """
    log_first = _log_binomial_term(trials, rate, at_least)
    x = np.arange(at_least, trials, dtype=np.float64)
    steps = np.log((trials - x) * rate) - np.log((x + 1) * (1 - rate))
    logs = log_first + np.concatenate(([0.0], np.cumsum(steps)))
    top = float(np.max(logs))
    return top + math.log(float(np.sum(np.exp(logs - top))))


def _connected(n: int, k: int, bad_rate: float) -> bool:
    """Rule 1: the union bound on a cut of the honest survivors is below ``2**-41``."""
    if k >= n - 1 or bad_rate <= 0:
        return True  # the complete graph has no cut; with no bad clients there is none
    if bad_rate >= 1:
        return False
    log_cut = math.log(n) + math.log(n - k - 1) - math.log(2) + k * math.log(bad_rate)
    return log_cut < _LOG_SECURITY


def _survives(n: int, k: int, threshold: int, dropout_rate: float) -> bool:
    """Rule 3: ``n * P[Binomial(k, dropout_rate) >= k - threshold + 1] <= 2**-20``.

    A client falls short of ``threshold`` when ``k - threshold + 1`` of its ``k`` neighbours
    drop. Past the mean the terms of the tail fall with ratio at most
    ``r = P(m+1)/P(m)`` < 1, so ``P(m) <= tail <= P(m) / (1 - r)``; the tail is summed term
    by term only when these bounds straddle the target.
    """
    fatal = k - threshold + 1
    if fatal <= 0:
        return False
    if dropout_rate <= 0:
        return True
    if fatal <= k * dropout_rate:
        return False  # at or below the median of the dropped count: probability >= 1/2
    target = _LOG_CORRECTNESS - math.log(n)
    log_first = _log_binomial_term(k, dropout_rate, fatal)
    if log_first > target:
        return False
    ratio = (k - fatal) * dropout_rate / ((fatal + 1) * (1 - dropout_rate))
    if log_first - math.log1p(-ratio) <= target:
        return True
    return _log_binomial_tail(k, dropout_rate, fatal) <= target


def _least_threshold(n: int, k: int, corrupt_rate: float) -> int:
    """A lower bound on ``required_threshold(clients=n, holders=k, ...)``, in O(1).

    The assumed corrupt holders ``c`` are at least the mode ``floor((k+1)(A+1)/(n+2))`` of
    their hypergeometric law: ``P[X > x] >= P[X = mode] >= 1/(k+1)`` for ``x`` below the mode,
    far above the ``2**-41 / n`` at which :mod:`secure_agg.threshold` stops.
    """
    corrupt = math.floor(corrupt_rate * n + _EPS)
    mode = (k + 1) * (corrupt + 1) // (n + 2) if corrupt else 0
    return max(2, (k + mode) // 2 + 1)


def _threshold_for(n: int, k: int, *, dropout_rate: float, corrupt_rate: float) -> int | None:
    """The ``t`` that rules 1 to 3 allow for ``k`` neighbours, or ``None``."""
    if not _connected(n, k, dropout_rate + corrupt_rate):
        return None
    # A cheap test with a lower bound on t first: it skips most k that fail.
    least = _least_threshold(n, k, corrupt_rate)
    if least > k or not _survives(n, k, least, dropout_rate):
        return None
    threshold = required_threshold(clients=n, holders=k, corrupt_rate=corrupt_rate)
    if threshold > k or not _survives(n, k, threshold, dropout_rate):
        return None
    return threshold


def _check_rates(n: int, dropout_rate: float, corrupt_rate: float) -> None:
    if n < 3:
        raise SecAggError(ErrorCode.INVALID_PARAMETERS, f"need at least 3 clients, got {n}")
    for name, rate in (("dropout_rate", dropout_rate), ("corrupt_rate", corrupt_rate)):
        if not 0 <= rate < 1:
            raise SecAggError(ErrorCode.INVALID_PARAMETERS, f"{name} must be in [0, 1)")


def choose_parameters(n: int, *, dropout_rate: float, corrupt_rate: float) -> GraphParameters:
    """The cheapest graph and its threshold meeting the targets (module docstring)."""
    _check_rates(n, dropout_rate, corrupt_rate)
    return _choose(n, float(dropout_rate), float(corrupt_rate))


@functools.lru_cache(maxsize=1024)
def _choose(n: int, dropout_rate: float, corrupt_rate: float) -> GraphParameters:
    for k in [*range(2, n - 1, 2), n - 1]:
        threshold = _threshold_for(n, k, dropout_rate=dropout_rate, corrupt_rate=corrupt_rate)
        if threshold is not None:
            return GraphParameters(degree=None if k == n - 1 else k, threshold=threshold)
    # No graph meets the correctness target; the complete graph comes closest.
    threshold = required_threshold(clients=n, holders=n - 1, corrupt_rate=corrupt_rate)
    dropped = math.floor(dropout_rate * n + _EPS)
    if threshold > n - 1 - dropped:
        raise SecAggError(
            ErrorCode.INVALID_PARAMETERS,
            f"no threshold works for n={n}, dropout_rate={dropout_rate}, "
            f"corrupt_rate={corrupt_rate}: lower the rates or enlarge the cohort",
        )
    return GraphParameters(degree=None, threshold=threshold)


REFERENCE_TABLE: dict[tuple[int, float, float], tuple[int | None, int]] = {
    (10, 0.05, 0.0): (None, 5),
    (10, 0.05, 0.05): (None, 5),
    (10, 0.05, 0.1): (None, 6),
    (10, 0.05, 0.2): (None, 6),
    (10, 0.1, 0.0): (None, 5),
    (10, 0.1, 0.05): (None, 5),
    (10, 0.1, 0.1): (None, 6),
    (10, 0.1, 0.2): (None, 6),
    (10, 0.2, 0.0): (None, 5),
    (10, 0.2, 0.05): (None, 5),
    (10, 0.2, 0.1): (None, 6),
    (10, 0.2, 0.2): (None, 6),
    (10, 0.3, 0.0): (None, 5),
    (10, 0.3, 0.05): (None, 5),
    (10, 0.3, 0.1): (None, 6),
    (10, 0.3, 0.2): (None, 6),
    (20, 0.05, 0.0): (None, 10),
    (20, 0.05, 0.05): (None, 11),
    (20, 0.05, 0.1): (None, 11),
    (20, 0.05, 0.2): (None, 12),
    (20, 0.1, 0.0): (None, 10),
    (20, 0.1, 0.05): (None, 11),
    (20, 0.1, 0.1): (None, 11),
    (20, 0.1, 0.2): (None, 12),
    (20, 0.2, 0.0): (None, 10),
    (20, 0.2, 0.05): (None, 11),
    (20, 0.2, 0.1): (None, 11),
    (20, 0.2, 0.2): (None, 12),
    (20, 0.3, 0.0): (None, 10),
    (20, 0.3, 0.05): (None, 11),
    (20, 0.3, 0.1): (None, 11),
    (20, 0.3, 0.2): (None, 12),
    (50, 0.05, 0.0): (20, 11),
    (50, 0.05, 0.05): (24, 14),
    (50, 0.05, 0.1): (26, 16),
    (50, 0.05, 0.2): (36, 24),
    (50, 0.1, 0.0): (32, 17),
    (50, 0.1, 0.05): (36, 20),
    (50, 0.1, 0.1): (40, 23),
    (50, 0.1, 0.2): (None, 30),
    (50, 0.2, 0.0): (None, 25),
    (50, 0.2, 0.05): (None, 26),
    (50, 0.2, 0.1): (None, 28),
    (50, 0.2, 0.2): (None, 30),
    (50, 0.3, 0.0): (None, 25),
    (50, 0.3, 0.05): (None, 26),
    (50, 0.3, 0.1): (None, 28),
    (50, 0.3, 0.2): (None, 30),
    (100, 0.05, 0.0): (22, 12),
    (100, 0.05, 0.05): (28, 17),
    (100, 0.05, 0.1): (36, 24),
    (100, 0.05, 0.2): (52, 37),
    (100, 0.1, 0.0): (34, 18),
    (100, 0.1, 0.05): (42, 24),
    (100, 0.1, 0.1): (52, 32),
    (100, 0.1, 0.2): (70, 46),
    (100, 0.2, 0.0): (74, 38),
    (100, 0.2, 0.05): (86, 46),
    (100, 0.2, 0.1): (None, 55),
    (100, 0.2, 0.2): (None, 60),
    (100, 0.3, 0.0): (None, 50),
    (100, 0.3, 0.05): (None, 53),
    (100, 0.3, 0.1): (None, 55),
    (100, 0.3, 0.2): (None, 60),
    (103, 0.05, 0.0): (22, 12),
    (103, 0.05, 0.05): (28, 17),
    (103, 0.05, 0.1): (38, 25),
    (103, 0.05, 0.2): (52, 37),
    (103, 0.1, 0.0): (34, 18),
    (103, 0.1, 0.05): (42, 24),
    (103, 0.1, 0.1): (52, 32),
    (103, 0.1, 0.2): (70, 46),
    (103, 0.2, 0.0): (74, 38),
    (103, 0.2, 0.05): (86, 46),
    (103, 0.2, 0.1): (None, 57),
    (103, 0.2, 0.2): (None, 62),
    (103, 0.3, 0.0): (None, 52),
    (103, 0.3, 0.05): (None, 54),
    (103, 0.3, 0.1): (None, 57),
    (103, 0.3, 0.2): (None, 62),
    (200, 0.05, 0.0): (22, 12),
    (200, 0.05, 0.05): (38, 25),
    (200, 0.05, 0.1): (52, 37),
    (200, 0.05, 0.2): (74, 56),
    (200, 0.1, 0.0): (34, 18),
    (200, 0.1, 0.05): (54, 33),
    (200, 0.1, 0.1): (72, 47),
    (200, 0.1, 0.2): (104, 73),
    (200, 0.2, 0.0): (78, 40),
    (200, 0.2, 0.05): (106, 59),
    (200, 0.2, 0.1): (132, 77),
    (200, 0.2, 0.2): (180, 111),
    (200, 0.3, 0.0): (194, 98),
    (200, 0.3, 0.05): (None, 105),
    (200, 0.3, 0.1): (None, 110),
    (200, 0.3, 0.2): (None, 120),
    (500, 0.05, 0.0): (24, 13),
    (500, 0.05, 0.05): (50, 35),
    (500, 0.05, 0.1): (64, 47),
    (500, 0.05, 0.2): (88, 68),
    (500, 0.1, 0.0): (36, 19),
    (500, 0.1, 0.05): (74, 48),
    (500, 0.1, 0.1): (94, 64),
    (500, 0.1, 0.2): (138, 100),
    (500, 0.2, 0.0): (82, 42),
    (500, 0.2, 0.05): (146, 86),
    (500, 0.2, 0.1): (194, 120),
    (500, 0.2, 0.2): (302, 198),
    (500, 0.3, 0.0): (204, 103),
    (500, 0.3, 0.05): (310, 168),
    (500, 0.3, 0.1): (412, 232),
    (500, 0.3, 0.2): (None, 300),
    (1000, 0.05, 0.0): (24, 13),
    (1000, 0.05, 0.05): (54, 38),
    (1000, 0.05, 0.1): (68, 50),
    (1000, 0.05, 0.2): (98, 76),
    (1000, 0.1, 0.0): (38, 20),
    (1000, 0.1, 0.05): (82, 54),
    (1000, 0.1, 0.1): (106, 73),
    (1000, 0.1, 0.2): (156, 114),
    (1000, 0.2, 0.0): (84, 43),
    (1000, 0.2, 0.05): (170, 102),
    (1000, 0.2, 0.1): (226, 142),
    (1000, 0.2, 0.2): (374, 250),
    (1000, 0.3, 0.0): (212, 107),
    (1000, 0.3, 0.05): (404, 226),
    (1000, 0.3, 0.1): (566, 329),
    (1000, 0.3, 0.2): (934, 568),
    (10000, 0.05, 0.0): (26, 14),
    (10000, 0.05, 0.05): (64, 45),
    (10000, 0.05, 0.1): (80, 59),
    (10000, 0.05, 0.2): (114, 89),
    (10000, 0.1, 0.0): (42, 22),
    (10000, 0.1, 0.05): (96, 64),
    (10000, 0.1, 0.1): (124, 86),
    (10000, 0.1, 0.2): (186, 137),
    (10000, 0.2, 0.0): (94, 48),
    (10000, 0.2, 0.05): (210, 128),
    (10000, 0.2, 0.1): (284, 181),
    (10000, 0.2, 0.2): (492, 334),
    (10000, 0.3, 0.0): (238, 120),
    (10000, 0.3, 0.05): (538, 307),
    (10000, 0.3, 0.1): (830, 495),
    (10000, 0.3, 0.2): (2028, 1286),
    (100000, 0.05, 0.0): (30, 16),
    (100000, 0.05, 0.05): (68, 48),
    (100000, 0.05, 0.1): (88, 65),
    (100000, 0.05, 0.2): (126, 98),
    (100000, 0.1, 0.0): (46, 24),
    (100000, 0.1, 0.05): (106, 70),
    (100000, 0.1, 0.1): (134, 93),
    (100000, 0.1, 0.2): (204, 150),
    (100000, 0.2, 0.0): (104, 53),
    (100000, 0.2, 0.05): (230, 140),
    (100000, 0.2, 0.1): (314, 200),
    (100000, 0.2, 0.2): (552, 375),
    (100000, 0.3, 0.0): (264, 133),
    (100000, 0.3, 0.05): (604, 345),
    (100000, 0.3, 0.1): (936, 559),
    (100000, 0.3, 0.2): (2394, 1523),
    (1000000, 0.05, 0.0): (32, 17),
    (1000000, 0.05, 0.05): (74, 52),
    (1000000, 0.05, 0.1): (94, 69),
    (1000000, 0.05, 0.2): (134, 104),
    (1000000, 0.1, 0.0): (52, 27),
    (1000000, 0.1, 0.05): (114, 75),
    (1000000, 0.1, 0.1): (146, 101),
    (1000000, 0.1, 0.2): (222, 163),
    (1000000, 0.2, 0.0): (114, 58),
    (1000000, 0.2, 0.05): (250, 152),
    (1000000, 0.2, 0.1): (338, 215),
    (1000000, 0.2, 0.2): (600, 407),
    (1000000, 0.3, 0.0): (290, 146),
    (1000000, 0.3, 0.05): (662, 378),
    (1000000, 0.3, 0.1): (1016, 606),
    (1000000, 0.3, 0.2): (2624, 1669),
}
"""``{(n, dropout_rate, corrupt_rate): (degree, threshold)}``; see the module docstring."""
