"""Choosing the neighbour degree k and the Shamir threshold t (Bell et al. 2020).

:func:`choose_parameters` follows the structure of the analysis in Bell, Bonawitz, Gascón,
Lepoint and Raykova, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead"
(CCS 2020), as Google's ``fcp/secagg/server/graph_parameter_finder`` implements it for a
Harary graph. We re-derived and evaluated the bounds ourselves (this is not a copy of a
published table): union bounds over clients, evaluated numerically in float64 (exact
hypergeometric probabilities from ``math.lgamma`` and a log-ratio recurrence).

Inputs: ``n`` clients, at most ``A = floor(corrupt_rate * n)`` corrupt and
``D = floor(dropout_rate * n)`` dropped over the whole round, placed on the random circle
independently of the graph (the graph seed depends on keys drawn after the cohort is
fixed). Targets: security ``2**-40`` (``SECURITY_BITS``), correctness ``2**-20``
(``CORRECTNESS_BITS``). For even ``k`` from 2 up, accept the first ``k`` for which all of
these hold, and return the smallest valid ``t``:

1. *Connectivity* (the server learns only the full sum, not a partial sum of a cut-off
   group). The honest survivors stay connected unless two disjoint runs of ``k/2``
   consecutive clients are all corrupt or dropped: ``n (n - k - 1) / 2`` placements, each
   with probability ``(A + D)_k / (n)_k`` (falling factorials, all ``k`` positions bad).
   Require the sum below ``2**-41``.
2. *Privacy of each client's masks* against a server that lies about dropouts: ``t`` is
   :func:`~secure_agg.threshold.required_threshold`, the rule every client also checks
   (``2t > k + c`` for ``c`` assumed corrupt neighbours; derived in
   :mod:`secure_agg.threshold`). Degrees for which it exceeds ``k`` are skipped.
3. *Correctness*: every client keeps at least ``t`` surviving neighbours. ``Y``, the
   surviving neighbours, is hypergeometric ``(n, n - D, k)``; require
   ``n * P[Y < t] <= 2**-20``.

For ``n <= COMPLETE_GRAPH_MAX_CLIENTS`` (100), or if no ``k < n - 1`` qualifies, the graph is
complete (``k = n - 1``) and the threshold is the deterministic version of 2 and 3:
``t = floor((n - 1 + A) / 2) + 1``, feasible when ``t <= n - D - 1``.

Reference table (``REFERENCE_TABLE``, checked by the tests), ``(k, t)`` per row:

=========  ===========  ==========  ==========  ==========  ==========
n          dropout δ    γ = 0       γ = 0.05    γ = 0.1     γ = 0.2
=========  ===========  ==========  ==========  ==========  ==========
100        0.05         n-1, 50     n-1, 53     n-1, 55     n-1, 60
100        0.1          n-1, 50     n-1, 53     n-1, 55     n-1, 60
100        0.2          n-1, 50     n-1, 53     n-1, 55     n-1, 60
100        0.3          n-1, 50     n-1, 53     n-1, 55     n-1, 60
1000       0.05         22, 12      52, 37      66, 49      90, 71
1000       0.1          36, 19      78, 52      96, 67      140, 104
1000       0.2          76, 39      148, 90     194, 124    302, 206
1000       0.3          174, 88     314, 179    414, 247    642, 409
10000      0.05         26, 14      62, 44      80, 59      114, 89
10000      0.1          42, 22      96, 64      122, 85     184, 136
10000      0.2          94, 48      202, 123    280, 179    482, 328
10000      0.3          232, 117    522, 299    778, 465    1790, 1140
100000     0.05         30, 16      68, 48      88, 65      126, 98
100000     0.1          46, 24      106, 70     134, 93     204, 150
100000     0.2          104, 53     230, 140    312, 199    552, 375
100000     0.3          264, 133    602, 344    926, 553    2360, 1502
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
import math

import numpy as np

from secure_agg.errors import ErrorCode, SecAggError
from secure_agg.threshold import SECURITY_BITS, hypergeometric_pmf, required_threshold

__all__ = [
    "COMPLETE_GRAPH_MAX_CLIENTS",
    "CORRECTNESS_BITS",
    "REFERENCE_TABLE",
    "SECURITY_BITS",
    "GraphParameters",
    "choose_parameters",
]

CORRECTNESS_BITS = 20
COMPLETE_GRAPH_MAX_CLIENTS = 100
_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class GraphParameters:
    """A degree (``None``: complete graph) and a threshold ``t`` on neighbour shares."""

    degree: int | None
    threshold: int

    def neighbours(self, n: int) -> int:
        """Neighbours per client in a cohort of ``n``."""
        return n - 1 if self.degree is None or self.degree >= n - 1 else self.degree


def _log_disconnect_probability(n: int, k: int, bad: int) -> float:
    """Natural log of the union bound of rule 1; ``-inf`` when ``bad < k``."""
    if bad < k:
        return -math.inf
    log_placements = math.log(n) + math.log(n - k - 1) - math.log(2)
    log_all_bad = (
        math.lgamma(bad + 1)
        - math.lgamma(bad - k + 1)
        + math.lgamma(n - k + 1)
        - math.lgamma(n + 1)
    )
    return log_placements + log_all_bad


def _harary_threshold(
    n: int, k: int, *, corrupt_rate: float, corrupt: int, dropped: int
) -> int | None:
    """The ``t`` that rules 1 to 3 allow for degree ``k``, or ``None``."""
    security = 2.0 ** -(SECURITY_BITS + 1)
    correctness = 2.0**-CORRECTNESS_BITS
    if _log_disconnect_probability(n, k, corrupt + dropped) >= math.log(security):
        return None
    threshold = required_threshold(clients=n, holders=k, corrupt_rate=corrupt_rate)
    if threshold > k:
        return None
    surviving = hypergeometric_pmf(n, n - dropped, k)
    if n * float(np.sum(surviving[:threshold])) > correctness:
        return None
    return threshold


def _check_rates(n: int, dropout_rate: float, corrupt_rate: float) -> None:
    if n < 3:
        raise SecAggError(ErrorCode.INVALID_PARAMETERS, f"need at least 3 clients, got {n}")
    for name, rate in (("dropout_rate", dropout_rate), ("corrupt_rate", corrupt_rate)):
        if not 0 <= rate < 1:
            raise SecAggError(ErrorCode.INVALID_PARAMETERS, f"{name} must be in [0, 1)")


def choose_parameters(n: int, *, dropout_rate: float, corrupt_rate: float) -> GraphParameters:
    """The smallest Harary degree and threshold meeting the targets (module docstring)."""
    _check_rates(n, dropout_rate, corrupt_rate)
    corrupt = math.floor(corrupt_rate * n + _EPS)
    dropped = math.floor(dropout_rate * n + _EPS)
    if n > COMPLETE_GRAPH_MAX_CLIENTS:
        for k in range(2, n - 1, 2):
            threshold = _harary_threshold(
                n, k, corrupt_rate=corrupt_rate, corrupt=corrupt, dropped=dropped
            )
            if threshold is not None:
                return GraphParameters(degree=k, threshold=threshold)
    threshold = required_threshold(clients=n, holders=n - 1, corrupt_rate=corrupt_rate)
    if threshold > n - dropped - 1:
        raise SecAggError(
            ErrorCode.INVALID_PARAMETERS,
            f"no threshold works for n={n}, dropout_rate={dropout_rate}, "
            f"corrupt_rate={corrupt_rate}: lower the rates or enlarge the cohort",
        )
    return GraphParameters(degree=None, threshold=threshold)


REFERENCE_TABLE: dict[tuple[int, float, float], tuple[int | None, int]] = {
    (100, 0.05, 0.0): (None, 50),
    (100, 0.05, 0.05): (None, 53),
    (100, 0.05, 0.1): (None, 55),
    (100, 0.05, 0.2): (None, 60),
    (100, 0.1, 0.0): (None, 50),
    (100, 0.1, 0.05): (None, 53),
    (100, 0.1, 0.1): (None, 55),
    (100, 0.1, 0.2): (None, 60),
    (100, 0.2, 0.0): (None, 50),
    (100, 0.2, 0.05): (None, 53),
    (100, 0.2, 0.1): (None, 55),
    (100, 0.2, 0.2): (None, 60),
    (100, 0.3, 0.0): (None, 50),
    (100, 0.3, 0.05): (None, 53),
    (100, 0.3, 0.1): (None, 55),
    (100, 0.3, 0.2): (None, 60),
    (1000, 0.05, 0.0): (22, 12),
    (1000, 0.05, 0.05): (52, 37),
    (1000, 0.05, 0.1): (66, 49),
    (1000, 0.05, 0.2): (90, 71),
    (1000, 0.1, 0.0): (36, 19),
    (1000, 0.1, 0.05): (78, 52),
    (1000, 0.1, 0.1): (96, 67),
    (1000, 0.1, 0.2): (140, 104),
    (1000, 0.2, 0.0): (76, 39),
    (1000, 0.2, 0.05): (148, 90),
    (1000, 0.2, 0.1): (194, 124),
    (1000, 0.2, 0.2): (302, 206),
    (1000, 0.3, 0.0): (174, 88),
    (1000, 0.3, 0.05): (314, 179),
    (1000, 0.3, 0.1): (414, 247),
    (1000, 0.3, 0.2): (642, 409),
    (10000, 0.05, 0.0): (26, 14),
    (10000, 0.05, 0.05): (62, 44),
    (10000, 0.05, 0.1): (80, 59),
    (10000, 0.05, 0.2): (114, 89),
    (10000, 0.1, 0.0): (42, 22),
    (10000, 0.1, 0.05): (96, 64),
    (10000, 0.1, 0.1): (122, 85),
    (10000, 0.1, 0.2): (184, 136),
    (10000, 0.2, 0.0): (94, 48),
    (10000, 0.2, 0.05): (202, 123),
    (10000, 0.2, 0.1): (280, 179),
    (10000, 0.2, 0.2): (482, 328),
    (10000, 0.3, 0.0): (232, 117),
    (10000, 0.3, 0.05): (522, 299),
    (10000, 0.3, 0.1): (778, 465),
    (10000, 0.3, 0.2): (1790, 1140),
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
    (100000, 0.2, 0.1): (312, 199),
    (100000, 0.2, 0.2): (552, 375),
    (100000, 0.3, 0.0): (264, 133),
    (100000, 0.3, 0.05): (602, 344),
    (100000, 0.3, 0.1): (926, 553),
    (100000, 0.3, 0.2): (2360, 1502),
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
