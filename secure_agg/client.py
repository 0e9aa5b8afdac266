"""The client side of SecAgg+ as a state machine, one class per phase.

Drive it with messages from the server::

    step = start_client(config, client_id=7, identity_key=key)  # -> AdvertiseKeys
    step = step.state.handle(keys_broadcast)                      # -> ShareKeys
    step = step.state.handle(shares_delivery)                     # -> no message
    step = step.state.mask(layout_encoded_vector)                 # -> MaskedInput
    step = step.state.handle(consistency_request)                 # -> ConsistencySignature
    step = step.state.handle(unmask_request)                      # -> UnmaskResponse

Every call returns a :class:`ClientStep`: the next state and the message to send (or
``None``). The states:

* :class:`ClientAdvertiseKeys` waits for :class:`KeysBroadcast`; holds both X25519
  private keys and the self-mask secret ``b`` it committed to.
* :class:`ClientShareKeys` waits for :class:`SharesDelivery`; holds the pairwise share
  keys, the pairwise mask seeds and the self-mask seed.
* :class:`ClientMaskedInput` waits for ``mask(vector)``; holds the mask seeds, the self-mask
  seed and the shares its neighbours sent.
* :class:`ClientConsistencyCheck` waits for :class:`ConsistencyRequest`; holds the received
  shares.
* :class:`ClientUnmasking` waits for :class:`UnmaskRequest`; holds the received shares and
  the signed survivor set.
* :class:`ClientCompleted` holds no secrets; a second unmask request aborts it.
* :class:`ClientAborted` holds no secrets, only the :class:`AbortReason`.

Each state keeps only what later phases need: the X25519 private keys die once the
pairwise keys are derived (phase 0 -> 1), the share keys once shares are opened, the mask
seeds once the vector is masked, the received shares once the unmask response is built.
(Python cannot wipe memory; "erase" means no reference survives in the state.)

The threshold. Before it sends a single share, the client checks the round's ``t`` against
the one rule of :mod:`secure_agg.threshold`: ``2t > h + c`` for its ``h`` share holders and
the ``c`` corrupt holders it assumes at ``corrupt_rate``. A lower ``t`` would let a server
that lies about dropouts rebuild both of its secrets; the client aborts with
``UNSAFE_THRESHOLD`` and reveals nothing.

Unusable neighbour keys. A neighbour whose advertised X25519 key has small order (which an
honest coordinator refuses when it is advertised) is treated as dropped: the client shares
nothing with it, ignores what it sends, and goes on if enough holders remain.

Aborts. On each condition in docs/architecture.md, section 4, and on every lie of
docs/protocol.md's threat model, the client moves to :class:`ClientAborted` with the
matching :class:`AbortReason` and sends a :class:`ClientAbort`; it reveals nothing after
that. A :class:`RoundAborted` from the server moves any live state to
:class:`ClientAborted` (``SERVER_ABORTED``) silently. A message the current state does not
expect raises
:class:`~secure_agg.errors.SecAggError` (``UNEXPECTED_MESSAGE``) naming both; the state is
unchanged, so the caller may ignore it. ``mask`` raises ``INVALID_INPUT`` for a vector of
the wrong dtype or length.

Never both shares for one neighbour: the unmask response reveals the b-share of a
neighbour only if it is listed alive and the s_sk-share only if it is listed dead, after
checking that the two lists are disjoint; and it answers one unmask request only.

The base of the states and the aborted state live in :mod:`secure_agg.client_base`;
phases 2 to 4 (masking, the consistency check, unmasking) in
:mod:`secure_agg.client_masking`. Every state is importable from here.

For the edge agent: the states are not meant to be persisted. Their secrets live in memory
only, so an agent that restarts mid-round drops out of that round (which the protocol
tolerates) and joins the next one with fresh keys. Costs per round: ``n`` signature checks
on the broadcast, ``2k`` X25519 agreements, Shamir sharing to ``k`` neighbours, ``k + 1``
PRG expansions of the vector, and at most ``k + 1`` signature checks when unmasking.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secure_agg import kdf, shamir, signing
from secure_agg.client_base import (
    AbortError,
    ClientAborted,
    ClientIdentity,
    ClientState,
    ClientStep,
    check_ids,
)
from secure_agg.client_masking import (
    ClientCompleted,
    ClientConsistencyCheck,
    ClientMaskedInput,
    ClientUnmasking,
)
from secure_agg.errors import ErrorCode, SecAggError
from secure_agg.messages import (
    AdvertiseKeys,
    EncryptedShare,
    KeysBroadcast,
    ServerMessage,
    ShareKeys,
    SharesDelivery,
)
from secure_agg.params import SessionConfig
from secure_agg.randomness import RandomSource, random_below, system_random
from secure_agg.reasons import AbortReason, Phase
from secure_agg.session import Session, commit_self_mask, self_mask_seed
from secure_agg.share_box import OpenedShare, is_reflection, open_share, seal_share
from secure_agg.threshold import DEFAULT_CORRUPT_RATE, threshold_is_safe

__all__ = [
    "ClientAborted",
    "ClientAdvertiseKeys",
    "ClientCompleted",
    "ClientConsistencyCheck",
    "ClientMaskedInput",
    "ClientShareKeys",
    "ClientState",
    "ClientStep",
    "ClientUnmasking",
    "start_client",
]


def start_client(
    config: SessionConfig,
    *,
    client_id: int,
    identity_key: Ed25519PrivateKey,
    corrupt_rate: float = DEFAULT_CORRUPT_RATE,
    source: RandomSource = system_random,
) -> ClientStep:
    """Phase 0: draw two fresh X25519 key pairs and the self-mask secret ``b``, sign the
    keys and a commitment to ``b``, and wait for the broadcast.

    ``identity_key`` is the client's enrolled Ed25519 key (generated and stored by the
    agent); ``corrupt_rate`` is the fraction of the cohort this client assumes colludes with
    the server (it decides which thresholds it accepts, :mod:`secure_agg.threshold`);
    ``source`` supplies every random byte the client uses this round. Raises
    ``INVALID_PARAMETERS`` for a client id outside ``[1, 2**63)`` or a rate outside
    ``[0, 1)``.
    """
    if not 0 < client_id < 2**63:
        raise SecAggError(ErrorCode.INVALID_PARAMETERS, f"client id {client_id} not in [1, 2**63)")
    if not 0 <= corrupt_rate < 1:
        raise SecAggError(ErrorCode.INVALID_PARAMETERS, "corrupt_rate must be in [0, 1)")
    identity = ClientIdentity(config, client_id, identity_key, source, corrupt_rate)
    encryption_key = kdf.generate_private_key(source)
    masking_key = kdf.generate_private_key(source)
    secret = random_below(source, shamir.PRIME)
    encryption_public = kdf.public_bytes(encryption_key)
    masking_public = kdf.public_bytes(masking_key)
    commitment = commit_self_mask(round_id=config.round_id, client_id=client_id, secret=secret)
    payload = signing.advertise_payload(
        round_id=config.round_id,
        client_id=client_id,
        encryption_key=encryption_public,
        masking_key=masking_public,
        self_mask_commitment=commitment,
    )
    advert = AdvertiseKeys(
        round_id=config.round_id,
        client_id=client_id,
        identity_key=signing.identity_public_bytes(identity_key),
        encryption_key=encryption_public,
        masking_key=masking_public,
        self_mask_commitment=commitment,
        signature=signing.sign(identity_key, payload),
    )
    state = ClientAdvertiseKeys(identity, encryption_key, masking_key, secret, advert)
    return ClientStep(state, advert)


class ClientAdvertiseKeys(ClientState):
    """Phase 0 done: keys advertised; waits for :class:`KeysBroadcast`."""

    phase = Phase.ADVERTISE_KEYS
    expects = (KeysBroadcast,)

    def __init__(
        self,
        identity: ClientIdentity,
        encryption_key: X25519PrivateKey,
        masking_key: X25519PrivateKey,
        secret: int,
        advert: AdvertiseKeys,
    ) -> None:
        super().__init__(identity)
        self._encryption_key = encryption_key
        self._masking_key = masking_key
        self._secret = secret
        self._advert = advert

    def _handle(self, message: ServerMessage) -> ClientStep:
        assert isinstance(message, KeysBroadcast)
        identity = self._identity
        config = identity.config
        if message.round_id != config.round_id:
            raise AbortError(AbortReason.SESSION_MISMATCH)
        session = self._check_broadcast(message)
        threshold = session.threshold
        share_keys: dict[int, bytes] = {}
        mask_seeds: dict[int, bytes] = {}
        unusable: set[int] = set()
        for peer in session.neighbours(identity.client_id):
            entry = session.by_id[peer]
            try:
                share_key = kdf.derive_pair_key(
                    self._encryption_key,
                    entry.encryption_key,
                    session_id=session.session_id,
                    purpose=kdf.Purpose.SHARE_ENCRYPTION,
                    own_id=identity.client_id,
                    peer_id=peer,
                )
                mask_seed = kdf.derive_pair_key(
                    self._masking_key,
                    entry.masking_key,
                    session_id=session.session_id,
                    purpose=kdf.Purpose.PAIR_MASK,
                    own_id=identity.client_id,
                    peer_id=peer,
                )
            except SecAggError:
                # A small-order key (or one of the wrong length) no exchange can use: the
                # neighbour cannot take part, so it counts as dropped, not as a reason to
                # give up the round.
                unusable.add(peer)
                continue
            share_keys[peer] = share_key
            mask_seeds[peer] = mask_seed
        holders = len(share_keys)
        if holders < threshold:
            raise AbortError(AbortReason.TOO_FEW_NEIGHBOURS)
        if not threshold_is_safe(
            threshold,
            clients=config.params.max_clients,
            holders=holders,
            corrupt_rate=identity.corrupt_rate,
        ):
            raise AbortError(AbortReason.UNSAFE_THRESHOLD)
        secret = self._secret
        recipients = sorted(share_keys)
        self_mask_shares = shamir.split(
            secret, threshold=threshold, xs=recipients, source=identity.source
        )
        key_shares = shamir.split(
            kdf.private_scalar(self._masking_key),
            threshold=threshold,
            xs=recipients,
            source=identity.source,
        )
        sealed = tuple(
            seal_share(
                share_keys[recipient],
                session_id=session.session_id,
                sender=identity.client_id,
                recipient=recipient,
                self_mask_share=b_share,
                key_share=s_share,
                source=identity.source,
            )
            for recipient, b_share, s_share in zip(
                recipients, self_mask_shares, key_shares, strict=True
            )
        )
        outgoing = ShareKeys(
            session_id=session.session_id, client_id=identity.client_id, shares=sealed
        )
        seed = self_mask_seed(
            session_id=session.session_id, client_id=identity.client_id, secret=secret
        )
        state = ClientShareKeys(
            identity, session, share_keys, mask_seeds, seed, frozenset(unusable)
        )
        return ClientStep(state, outgoing)

    def _check_broadcast(self, message: KeysBroadcast) -> Session:
        identity = self._identity
        keys = message.keys
        ids = [entry.client_id for entry in keys]
        if len(set(ids)) != len(ids):
            raise AbortError(AbortReason.KEY_REUSED)
        if len(keys) > identity.config.params.max_clients:
            raise AbortError(AbortReason.TOO_MANY_CLIENTS)
        own = [entry for entry in keys if entry.client_id == identity.client_id]
        if not own:
            raise AbortError(AbortReason.OWN_KEYS_MISSING)
        if own[0] != self._advert:
            raise AbortError(AbortReason.OWN_KEYS_ALTERED)
        public_keys = [entry.encryption_key for entry in keys]
        public_keys += [entry.masking_key for entry in keys]
        public_keys += [entry.identity_key for entry in keys]
        if len(set(public_keys)) != len(public_keys):
            raise AbortError(AbortReason.KEY_REUSED)
        for entry in keys:
            if entry.round_id != identity.config.round_id or entry.client_id < 1:
                raise AbortError(AbortReason.BAD_SIGNATURE)
            payload = signing.advertise_payload(
                round_id=entry.round_id,
                client_id=entry.client_id,
                encryption_key=entry.encryption_key,
                masking_key=entry.masking_key,
                self_mask_commitment=entry.self_mask_commitment,
            )
            try:
                signing.verify(entry.identity_key, entry.signature, payload)
            except SecAggError as exc:
                raise AbortError(AbortReason.BAD_SIGNATURE) from exc
        return Session(identity.config, tuple(sorted(keys, key=lambda entry: entry.client_id)))


class ClientShareKeys(ClientState):
    """Phase 1 done: shares sent; waits for :class:`SharesDelivery`."""

    phase = Phase.SHARE_KEYS
    expects = (SharesDelivery,)

    def __init__(
        self,
        identity: ClientIdentity,
        session: Session,
        share_keys: dict[int, bytes],
        mask_seeds: dict[int, bytes],
        self_seed: bytes,
        unusable: frozenset[int],
    ) -> None:
        super().__init__(identity)
        self._session = session
        self._share_keys = share_keys
        self._mask_seeds = mask_seeds
        self._self_seed = self_seed
        self._unusable = unusable

    def _handle(self, message: ServerMessage) -> ClientStep:
        assert isinstance(message, SharesDelivery)
        session = self._session
        own_id = self._identity.client_id
        if message.session_id != session.session_id:
            raise AbortError(AbortReason.SESSION_MISMATCH)
        received: dict[int, OpenedShare] = {}
        for share in message.shares:
            if share.sender in self._unusable and share.recipient == own_id:
                continue  # a neighbour we could not agree keys with: dropped, not opened
            sender, value = self._open(share)
            if sender in received:
                raise AbortError(AbortReason.REPLAYED_SHARE)
            received[sender] = value
        dead = set(message.dead)
        check_ids(session, dead)
        if own_id in dead:
            raise AbortError(AbortReason.SELF_LISTED_DEAD)
        if dead & set(received):
            raise AbortError(AbortReason.ALIVE_DEAD_OVERLAP)
        if len(received) < session.threshold:
            raise AbortError(AbortReason.TOO_FEW_NEIGHBOURS)
        neighbours = session.neighbours(own_id)
        known_dead = frozenset((neighbours - set(received)) | dead)
        seeds = {peer: self._mask_seeds[peer] for peer in received}
        state = ClientMaskedInput(
            self._identity, session, self._self_seed, seeds, received, known_dead
        )
        return ClientStep(state, None)

    def _open(self, share: EncryptedShare) -> tuple[int, OpenedShare]:
        session = self._session
        own_id = self._identity.client_id
        if share.session_id != session.session_id:
            raise AbortError(AbortReason.REPLAYED_SHARE)
        if share.sender == own_id:
            raise AbortError(AbortReason.REFLECTED_SHARE)
        if share.recipient != own_id:
            raise AbortError(AbortReason.UNEXPECTED_SHARE)
        check_ids(session, [share.sender])
        key = self._share_keys.get(share.sender)
        if key is None:
            raise AbortError(AbortReason.UNEXPECTED_SHARE)
        try:
            opened = open_share(key, share, session_id=session.session_id)
        except SecAggError as exc:
            if exc.code is ErrorCode.INVALID_MESSAGE:
                raise AbortError(AbortReason.MALFORMED_SHARE) from exc
            if is_reflection(key, share, session_id=session.session_id):
                raise AbortError(AbortReason.REFLECTED_SHARE) from exc
            raise AbortError(AbortReason.AEAD_FAILURE) from exc
        return share.sender, opened
