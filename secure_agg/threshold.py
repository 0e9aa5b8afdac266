"""When a Shamir threshold is safe against a server that lies: the one rule both sides use.

:func:`required_threshold` is the smallest safe ``t``; :func:`threshold_is_safe` checks a
given one. :func:`~secure_agg.graph_params.choose_parameters` picks ``t`` with it, and every
client checks the ``t`` it was sent with it before it reveals anything
(:class:`~secure_agg.client.ClientAdvertiseKeys`), because a client cannot trust the server
that chose ``t``.

The bound, derived
------------------
Client ``u`` Shamir-shares two secrets ``t``-of-``h`` among its ``h`` neighbours, the
*holders*: its self-mask seed ``b_u`` and its masking key ``s_u``. Its masked input is
``y_u = x_u + PRG(b_u) + sum_v +-PRG(s_uv)``. A server that holds ``b_u`` and ``s_u`` removes
every mask of ``y_u`` (``s_u`` and the neighbours' public keys give each ``s_uv``) and reads
``x_u``; with only one of them it learns nothing about ``x_u`` (Bonawitz et al. 2017,
"Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS, section 4 and
the active-adversary version of the protocol).

An honest holder reveals, once per round, the b-share of ``u`` if it was told ``u``
survived and the s-share if it was told ``u`` dropped; never both. A server that lies about
dropouts may tell each honest holder a different story, so the honest holders split into
``B`` (told "alive") and ``S`` (told "dead"), ``|B| + |S| <= h - c``, where ``c`` holders are
corrupt and give the server both shares. The server then has ``|B| + c`` b-shares and
``|S| + c`` s-shares, and needs ``t`` of each::

    2t <= |B| + |S| + 2c <= h + c.

So if ``2t > h + c`` no split of the survivor views, and no forwarding of genuine
signatures, lets the server rebuild both secrets of any one client. Conversely, when
``2t <= h + c`` (and ``t <= h``) the split ``|B| = t - c``, ``|S| = h - t`` works: with 6
clients on the complete graph, ``t = 2``, the server tells half the clients that client 6
survived and the other half that it dropped, and unmasks client 6. Note that the rule also
gives ``t > c`` whenever ``t <= h``: the corrupt holders alone rebuild nothing.

``c`` is not known; the client assumes a corrupt fraction ``gamma`` of the cohort. In the
neighbour graph of SecAgg+ (Bell, Bonawitz, Gascón, Lepoint and Raykova 2020, "Secure
Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS) the graph is seeded by the
session id, fixed only after every client has drawn its keys, so the ``A = floor(gamma * n)``
corrupt clients fall among ``u``'s ``h`` neighbours as a hypergeometric ``X ~ (n, A, h)``.
:func:`assumed_corrupt_holders` is the least ``c`` with ``n * P[X > c] <= 2**-41``: a union
bound over the ``n`` clients gives failure probability at most ``2**-41`` for the whole
round, half of the ``2**-40`` security target of
:mod:`~secure_agg.graph_params`. On the complete graph ``h = n - 1`` and ``c = A``, which gives
the deterministic ``t = floor((n - 1 + A) / 2) + 1``.

Which ``n``? The client counts against ``layout.max_clients``, the most clients the round's
sum may hold. A broadcast with more clients than that is refused anyway
(``TOO_MANY_CLIENTS``), so the real cohort is never larger, and a larger ``n`` only raises
``A`` and ``c``: a server cannot make a client accept a lower ``t`` by lying about ``n``.

Limits: the rule protects each client's input from a server colluding with up to ``c``
of its holders. It does not stop Sybils (clients the server invents), which the enrollment
CA must vouch against, and it assumes the corrupt clients do not choose their place in the
graph, which the session-id seed enforces.

Raises :class:`~secure_agg.errors.SecAggError` (``INVALID_PARAMETERS``) for a rate outside
``[0, 1)`` or counts that cannot describe a cohort.
"""

from __future__ import annotations

import math

import numpy as np

from secure_agg.errors import ErrorCode, SecAggError

__all__ = [
    "DEFAULT_CORRUPT_RATE",
    "SECURITY_BITS",
    "assumed_corrupt_holders",
    "corrupt_clients",
    "hypergeometric_pmf",
    "required_threshold",
    "threshold_is_safe",
]

SECURITY_BITS = 40
"""The security target: a server learns one input with probability at most ``2**-40``."""
DEFAULT_CORRUPT_RATE = 0.05
"""The corrupt fraction assumed unless configured; the coordinator's default too."""
_EPS = 1e-12


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def hypergeometric_pmf(population: int, marked: int, draws: int) -> np.ndarray:
    """``P[X = x]`` for ``x = 0..draws``, ``X`` marked items among ``draws`` drawn.

    The first nonzero term comes from ``lgamma``; the rest from the ratio
    ``P(x+1)/P(x) = (K-x)(k-x) / ((x+1)(N-K-k+x+1))``, summed in log space.
    """
    pmf = np.zeros(draws + 1)
    low = max(0, draws - (population - marked))
    high = min(draws, marked)
    log_first = (
        _log_comb(marked, low)
        + _log_comb(population - marked, draws - low)
        - _log_comb(population, draws)
    )
    x = np.arange(low, high, dtype=np.float64)
    steps = np.log((marked - x) * (draws - x)) - np.log(
        (x + 1) * (population - marked - draws + x + 1)
    )
    logs = log_first + np.concatenate(([0.0], np.cumsum(steps)))
    pmf[low : high + 1] = np.exp(logs)
    return pmf


def corrupt_clients(clients: int, corrupt_rate: float) -> int:
    """``A = floor(corrupt_rate * clients)``, the corrupt clients a cohort is assumed to hold."""
    if not 0 <= corrupt_rate < 1:
        raise SecAggError(ErrorCode.INVALID_PARAMETERS, "corrupt_rate must be in [0, 1)")
    return math.floor(corrupt_rate * clients + _EPS)


def _check_counts(clients: int, holders: int) -> None:
    if clients < 2 or not 1 <= holders <= clients - 1:
        raise SecAggError(
            ErrorCode.INVALID_PARAMETERS,
            f"{holders} share holders cannot be neighbours in a cohort of {clients}",
        )


def assumed_corrupt_holders(*, clients: int, holders: int, corrupt_rate: float) -> int:
    """The most corrupt holders ``c`` of one client's shares to plan for (module docstring).

    ``clients`` is the cohort size ``n`` (an upper bound on it is safe), ``holders`` the
    client's neighbours ``h``.
    """
    _check_counts(clients, holders)
    corrupt = corrupt_clients(clients, corrupt_rate)
    if corrupt == 0:
        return 0
    pmf = hypergeometric_pmf(clients, corrupt, holders)
    # above[x] = P[X > x]; it falls with x, so the x failing the bound form a prefix.
    above = np.concatenate((np.cumsum(pmf[::-1])[::-1][1:], [0.0]))
    bound = 2.0 ** -(SECURITY_BITS + 1)
    return int(np.count_nonzero(clients * above > bound))


def required_threshold(*, clients: int, holders: int, corrupt_rate: float) -> int:
    """The smallest ``t >= 2`` with ``2t > holders + assumed_corrupt_holders(...)``.

    It may exceed ``holders``: then no threshold is safe, and the caller must refuse.
    """
    corrupt = assumed_corrupt_holders(clients=clients, holders=holders, corrupt_rate=corrupt_rate)
    return max(2, (holders + corrupt) // 2 + 1)


def threshold_is_safe(threshold: int, *, clients: int, holders: int, corrupt_rate: float) -> bool:
    """Whether ``threshold`` keeps one client's input secret (module docstring).

    True when ``required_threshold(...) <= threshold <= holders``: high enough that no split
    of the survivor views gives the server both secrets, and low enough that the holders
    can rebuild the secrets at all.
    """
    needed = required_threshold(clients=clients, holders=holders, corrupt_rate=corrupt_rate)
    return needed <= threshold <= holders
