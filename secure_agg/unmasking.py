"""Which PRG masks the server removes from the masked sum, rebuilt from revealed shares.

The masked sum of the survivors U3 is ``sum(x_u + PRG(b_u) + sum_v +-PRG(s_uv))``. Pair
masks between two survivors cancel. What remains, and what :func:`removal_seeds` returns
the seeds for:

* each survivor's self mask ``PRG(b_u)``, with ``b_u`` rebuilt from its neighbours'
  b-shares (to subtract);
* for each client v that shared keys but sent no input (U2 - U3), its pair masks with its
  surviving neighbours w, from ``s_sk_v`` rebuilt from s_sk-shares; w added ``+PRG(s_vw)``
  if ``v > w`` and ``-PRG(s_vw)`` otherwise, so the server subtracts or adds it back.

Every rebuilt secret is checked against a commitment its owner made before any share was
sent: ``b_u`` against the hash ``u`` signed in its advert
(:func:`~secure_agg.session.commit_self_mask`), ``s_sk_v`` against ``v``'s advertised
public key. Shamir alone cannot see a forged share when exactly t shares are revealed (it
silently gives a wrong secret); the commitment can. When a secret misses its commitment and
more than t shares were revealed, :func:`recover_secret` searches for a polynomial through
t of them that meets it and holds at least (n + t) / 2 of the n shares. Its secret is the
owner's (the commitment binds it), so the server goes on with it, and the shares off it are
outvoted: forged by their responders, or dealt so by the owner, whenever at most
(n - t) / 2 of them are wrong. Otherwise the round aborts.

Raises :class:`~secure_agg.errors.SecAggError`: ``TOO_FEW_SHARES`` when fewer than t shares
of a needed secret were revealed, ``INCONSISTENT_SHARES`` when the shares disagree and no
such polynomial is found. Rebuilt secrets live only inside the call.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from secure_agg import kdf, shamir
from secure_agg.errors import ErrorCode, SecAggError
from secure_agg.session import Session, commit_self_mask, self_mask_seed

__all__ = ["MAX_SUBSETS", "Recovery", "recover_secret", "removal_seeds"]

MAX_SUBSETS = 4096
"""The most subsets of t shares one unmasking tries, over all its secrets, to outvote
forged shares."""


def _subsets(xs: list[int], threshold: int) -> itertools.chain[tuple[int, ...]]:
    """Subsets of ``threshold`` of ``xs``, the ones leaving out fewest shares first."""
    spare = len(xs) - threshold
    return itertools.chain.from_iterable(
        (
            tuple(x for x in xs if x not in excluded)
            for excluded in itertools.combinations(xs, leave_out)
        )
        for leave_out in range(1, spare + 1)
    )


def _on_polynomial(shares: Mapping[int, int], basis: tuple[int, ...]) -> frozenset[int]:
    """The x's of ``shares`` that lie on the polynomial through ``basis``."""
    on = set(basis)
    ys = [shares[x] for x in basis]
    for x in shares:
        if x not in on and shamir.evaluate(basis, ys, x) == shares[x]:
            on.add(x)
    return frozenset(on)


@dataclass
class Recovery:
    """Shared by every secret one unmasking rebuilds: the subsets of t shares it may still
    try (:data:`MAX_SUBSETS` in all, so forged shares of many secrets cost no more than of
    one), and the responders whose shares were outvoted."""

    budget: int = MAX_SUBSETS
    outvoted: set[int] = field(default_factory=set)


def recover_secret(
    shares: Mapping[int, int],
    *,
    threshold: int,
    matches: Callable[[int], bool],
    what: str,
    recovery: Recovery | None = None,
) -> int:
    """The secret of ``shares`` (``{responder: share}``) that ``matches`` its commitment.

    When the shares as a whole miss it, a forged share is looked for: subsets of
    ``threshold`` shares whose polynomial's secret meets the commitment. The commitment
    binds the secret, so any such secret is the owner's own. The responders off that
    polynomial are outvoted (added to ``recovery.outvoted``) and the secret is returned
    only when the polynomial holds at least ``(n + threshold) / 2`` of the n shares: no
    other polynomial can, so the shares off it are the wrong ones whenever at most
    ``(n - threshold) / 2`` of them are (forged by their responders, or dealt so by the
    owner). A smaller match could be a forgers' polynomial through the right secret, and
    naming the shares off it could blame honest responders.

    Raises ``TOO_FEW_SHARES``, or ``INCONSISTENT_SHARES`` when no such polynomial is found
    within the budget (always when exactly ``threshold`` shares were revealed).
    """
    recovery = recovery if recovery is not None else Recovery()
    try:
        secret = shamir.combine(shares, threshold=threshold)
    except SecAggError as exc:
        if exc.code is not ErrorCode.INCONSISTENT_SHARES:
            raise
    else:
        if matches(secret):
            return secret
    xs = sorted(shares)
    for basis in _subsets(xs, threshold):
        if recovery.budget <= 0:
            break
        recovery.budget -= 1
        on = _on_polynomial(shares, basis[:threshold])
        if len(on) < threshold or 2 * len(on) < len(xs) + threshold:
            continue
        candidate = shamir.combine({x: shares[x] for x in on}, threshold=threshold)
        if matches(candidate):
            recovery.outvoted.update(frozenset(xs) - on)
            return candidate
    raise SecAggError(
        ErrorCode.INCONSISTENT_SHARES,
        f"the {what} rebuilt from {len(xs)} shares does not meet its commitment, and no "
        f"polynomial through at least half of them and t meets it",
    )


def removal_seeds(
    session: Session,
    *,
    u2: frozenset[int],
    u3: frozenset[int],
    b_shares: dict[int, dict[int, int]],
    s_shares: dict[int, dict[int, int]],
    recovery: Recovery | None = None,
) -> tuple[list[bytes], list[bytes]]:
    """PRG seeds ``(add, subtract)`` that turn the masked sum of U3 into the plain sum.

    ``b_shares[u]`` maps responder ids to shares of ``b_u`` for every ``u`` in U3;
    ``s_shares[v]`` likewise for ``s_sk_v``, ``v`` in U2 - U3. ``recovery``: as in
    :func:`recover_secret`, shared by every secret.
    """
    threshold = session.threshold
    round_id = session.config.round_id
    add: list[bytes] = []
    subtract: list[bytes] = []
    for owner in sorted(u3):
        commitment = session.by_id[owner].self_mask_commitment

        def meets_commitment(
            secret: int, owner: int = owner, commitment: bytes = commitment
        ) -> bool:
            return commit_self_mask(round_id=round_id, client_id=owner, secret=secret) == commitment

        secret = recover_secret(
            b_shares.get(owner, {}),
            threshold=threshold,
            matches=meets_commitment,
            what=f"self-mask secret of client {owner}",
            recovery=recovery,
        )
        subtract.append(
            self_mask_seed(session_id=session.session_id, client_id=owner, secret=secret)
        )
    for owner in sorted(u2 - u3):
        partners = session.neighbours(owner) & u3
        if not partners:
            continue
        advertised = session.by_id[owner].masking_key

        def meets_public_key(scalar: int, advertised: bytes = advertised) -> bool:
            return kdf.scalar_matches_public_key(scalar, advertised)

        scalar = recover_secret(
            s_shares.get(owner, {}),
            threshold=threshold,
            matches=meets_public_key,
            what=f"masking key of client {owner}",
            recovery=recovery,
        )
        masking_key = kdf.private_key_from_scalar(scalar)
        for partner in sorted(partners):
            seed = kdf.derive_pair_key(
                masking_key,
                session.by_id[partner].masking_key,
                session_id=session.session_id,
                purpose=kdf.Purpose.PAIR_MASK,
                own_id=owner,
                peer_id=partner,
            )
            # The partner added +PRG towards larger ids and -PRG towards smaller ones.
            (subtract if owner > partner else add).append(seed)
    return add, subtract
