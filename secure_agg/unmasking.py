"""Which PRG masks the server removes from the masked sum, rebuilt from revealed shares.

The masked sum of the survivors U3 is ``sum(x_u + PRG(b_u) + sum_v +-PRG(s_uv))``. Pair
masks between two survivors cancel. What remains, and what :func:`removal_seeds` returns
the seeds for:

* each survivor's self mask ``PRG(b_u)``, with ``b_u`` rebuilt from its neighbours'
  b-shares (to subtract);
* for each client v that shared keys but sent no input (U2 - U3), its pair masks with its
  surviving neighbours w. ``s_sk_v`` is rebuilt from s_sk-shares and checked against v's
  advertised public key; w added ``+PRG(s_vw)`` if ``v > w`` and ``-PRG(s_vw)`` otherwise,
  so the server subtracts or adds it back.

Raises :class:`~secure_agg.errors.SecAggError`: ``TOO_FEW_SHARES`` when fewer than t shares
of a needed secret were revealed, ``INCONSISTENT_SHARES`` when the shares disagree or the
rebuilt key does not match its advertised public key. Rebuilt secrets live only inside the
call.
"""

from __future__ import annotations

from secure_agg import kdf, shamir
from secure_agg.errors import ErrorCode, SecAggError
from secure_agg.session import Session, self_mask_seed

__all__ = ["removal_seeds"]


def removal_seeds(
    session: Session,
    *,
    u2: frozenset[int],
    u3: frozenset[int],
    b_shares: dict[int, dict[int, int]],
    s_shares: dict[int, dict[int, int]],
) -> tuple[list[bytes], list[bytes]]:
    """PRG seeds ``(add, subtract)`` that turn the masked sum of U3 into the plain sum.

    ``b_shares[u]`` maps responder ids to shares of ``b_u`` for every ``u`` in U3;
    ``s_shares[v]`` likewise for ``s_sk_v``, ``v`` in U2 - U3.
    """
    threshold = session.threshold
    add: list[bytes] = []
    subtract: list[bytes] = []
    for owner in sorted(u3):
        secret = shamir.combine(b_shares.get(owner, {}), threshold=threshold)
        subtract.append(
            self_mask_seed(session_id=session.session_id, client_id=owner, secret=secret)
        )
    for owner in sorted(u2 - u3):
        partners = session.neighbours(owner) & u3
        if not partners:
            continue
        scalar = shamir.combine(s_shares.get(owner, {}), threshold=threshold)
        masking_key = kdf.private_key_from_scalar(scalar)
        if kdf.public_bytes(masking_key) != session.by_id[owner].masking_key:
            raise SecAggError(
                ErrorCode.INCONSISTENT_SHARES,
                f"rebuilt masking key of client {owner} does not match its advert",
            )
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
