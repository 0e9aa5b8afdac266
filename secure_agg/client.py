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

For the edge agent: the states are not meant to be persisted. Their secrets live in memory
only, so an agent that restarts mid-round drops out of that round (which the protocol
tolerates) and joins the next one with fresh keys. Costs per round: ``n`` signature checks
on the broadcast, ``2k`` X25519 agreements, Shamir sharing to ``k`` neighbours, ``k + 1``
PRG expansions of the vector, and at most ``k + 1`` signature checks when unmasking.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable
from typing import ClassVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secure_agg import kdf, shamir, signing
from secure_agg.errors import ErrorCode, SecAggError
from secure_agg.messages import (
    AdvertiseKeys,
    ClientAbort,
    ClientMessage,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShare,
    KeysBroadcast,
    MaskedInput,
    RevealedShare,
    RoundAborted,
    ServerMessage,
    ShareKeys,
    SharesDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from secure_agg.params import SessionConfig
from secure_agg.prg import add_masks
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


@dataclasses.dataclass(frozen=True)
class ClientStep:
    """The state after handling one input, and the message to send (if any)."""

    state: ClientState
    message: ClientMessage | None


@dataclasses.dataclass(frozen=True)
class _Identity:
    """What the client is, for the whole round."""

    config: SessionConfig
    client_id: int
    identity_key: Ed25519PrivateKey
    source: RandomSource
    corrupt_rate: float


class _AbortError(Exception):
    """Internal: unwinds a handler to the aborted state; never leaves this module."""

    def __init__(self, reason: AbortReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


class ClientState(abc.ABC):
    """Base of the client states: dispatch, rejection of unexpected messages, aborts."""

    phase: ClassVar[Phase]
    expects: ClassVar[tuple[type, ...]] = ()
    live: ClassVar[bool] = True

    def __init__(self, identity: _Identity) -> None:
        self._identity = identity

    @property
    def client_id(self) -> int:
        return self._identity.client_id

    def handle(self, message: ServerMessage) -> ClientStep:
        """Handle one server message; see the module docstring for the outcomes."""
        if (
            self.live
            and isinstance(message, RoundAborted)
            and message.round_id == self._identity.config.round_id
        ):
            return ClientStep(ClientAborted(self._identity, AbortReason.SERVER_ABORTED), None)
        if not isinstance(message, self.expects):
            raise SecAggError(
                ErrorCode.UNEXPECTED_MESSAGE,
                f"client state {type(self).__name__} does not expect {type(message).__name__}",
            )
        try:
            return self._handle(message)
        except _AbortError as abort:
            return self._abort(abort.reason)

    def _handle(self, message: ServerMessage) -> ClientStep:
        raise SecAggError(
            ErrorCode.UNEXPECTED_MESSAGE,
            f"client state {type(self).__name__} does not expect {type(message).__name__}",
        )

    def _abort(self, reason: AbortReason) -> ClientStep:
        notice = ClientAbort(
            round_id=self._identity.config.round_id,
            client_id=self._identity.client_id,
            reason=reason,
        )
        return ClientStep(ClientAborted(self._identity, reason), notice)


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
    identity = _Identity(config, client_id, identity_key, source, corrupt_rate)
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


def _check_ids(session: Session, ids: Iterable[int]) -> None:
    if not set(ids) <= session.clients:
        raise _AbortError(AbortReason.UNKNOWN_CLIENT_ID)


class ClientAdvertiseKeys(ClientState):
    """Phase 0 done: keys advertised; waits for :class:`KeysBroadcast`."""

    phase = Phase.ADVERTISE_KEYS
    expects = (KeysBroadcast,)

    def __init__(
        self,
        identity: _Identity,
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
            raise _AbortError(AbortReason.SESSION_MISMATCH)
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
            raise _AbortError(AbortReason.TOO_FEW_NEIGHBOURS)
        if not threshold_is_safe(
            threshold,
            clients=config.params.max_clients,
            holders=holders,
            corrupt_rate=identity.corrupt_rate,
        ):
            raise _AbortError(AbortReason.UNSAFE_THRESHOLD)
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
            raise _AbortError(AbortReason.KEY_REUSED)
        if len(keys) > identity.config.params.max_clients:
            raise _AbortError(AbortReason.TOO_MANY_CLIENTS)
        own = [entry for entry in keys if entry.client_id == identity.client_id]
        if not own:
            raise _AbortError(AbortReason.OWN_KEYS_MISSING)
        if own[0] != self._advert:
            raise _AbortError(AbortReason.OWN_KEYS_ALTERED)
        public_keys = [entry.encryption_key for entry in keys]
        public_keys += [entry.masking_key for entry in keys]
        public_keys += [entry.identity_key for entry in keys]
        if len(set(public_keys)) != len(public_keys):
            raise _AbortError(AbortReason.KEY_REUSED)
        for entry in keys:
            if entry.round_id != identity.config.round_id or entry.client_id < 1:
                raise _AbortError(AbortReason.BAD_SIGNATURE)
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
                raise _AbortError(AbortReason.BAD_SIGNATURE) from exc
        return Session(identity.config, tuple(sorted(keys, key=lambda entry: entry.client_id)))


class ClientShareKeys(ClientState):
    """Phase 1 done: shares sent; waits for :class:`SharesDelivery`."""

    phase = Phase.SHARE_KEYS
    expects = (SharesDelivery,)

    def __init__(
        self,
        identity: _Identity,
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
            raise _AbortError(AbortReason.SESSION_MISMATCH)
        received: dict[int, OpenedShare] = {}
        for share in message.shares:
            if share.sender in self._unusable and share.recipient == own_id:
                continue  # a neighbour we could not agree keys with: dropped, not opened
            sender, value = self._open(share)
            if sender in received:
                raise _AbortError(AbortReason.REPLAYED_SHARE)
            received[sender] = value
        dead = set(message.dead)
        _check_ids(session, dead)
        if own_id in dead:
            raise _AbortError(AbortReason.SELF_LISTED_DEAD)
        if dead & set(received):
            raise _AbortError(AbortReason.ALIVE_DEAD_OVERLAP)
        if len(received) < session.threshold:
            raise _AbortError(AbortReason.TOO_FEW_NEIGHBOURS)
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
            raise _AbortError(AbortReason.REPLAYED_SHARE)
        if share.sender == own_id:
            raise _AbortError(AbortReason.REFLECTED_SHARE)
        if share.recipient != own_id:
            raise _AbortError(AbortReason.UNEXPECTED_SHARE)
        _check_ids(session, [share.sender])
        key = self._share_keys.get(share.sender)
        if key is None:
            raise _AbortError(AbortReason.UNEXPECTED_SHARE)
        try:
            opened = open_share(key, share, session_id=session.session_id)
        except SecAggError as exc:
            if exc.code is ErrorCode.INVALID_MESSAGE:
                raise _AbortError(AbortReason.MALFORMED_SHARE) from exc
            if is_reflection(key, share, session_id=session.session_id):
                raise _AbortError(AbortReason.REFLECTED_SHARE) from exc
            raise _AbortError(AbortReason.AEAD_FAILURE) from exc
        return share.sender, opened


class ClientMaskedInput(ClientState):
    """Phase 2: shares received; waits for the local vector via :meth:`mask`."""

    phase = Phase.MASKED_INPUT

    def __init__(
        self,
        identity: _Identity,
        session: Session,
        self_seed: bytes,
        mask_seeds: dict[int, bytes],
        received: dict[int, OpenedShare],
        known_dead: frozenset[int],
    ) -> None:
        super().__init__(identity)
        self._session = session
        self._self_seed = self_seed
        self._mask_seeds = mask_seeds
        self._received = received
        self._known_dead = known_dead

    @property
    def session_id(self) -> bytes:
        return self._session.session_id

    def mask(self, encoded: np.ndarray) -> ClientStep:
        """Mask the quantized vector and move on to the consistency check.

        ``encoded`` is the output of :func:`~secure_agg.quantize.encode` for this round's
        layout: 1-D, ``layout.length`` elements, the layout's ring dtype. It is not
        modified. Returns a :class:`MaskedInput` whose array the caller owns:
        ``y = encoded + PRG(b) + sum(+-PRG(pair seed))`` modulo the ring, ``+`` towards
        neighbours with a larger id.
        """
        layout = self._session.config.params.layout
        if encoded.dtype != layout.dtype or encoded.shape != (layout.length,):
            raise SecAggError(
                ErrorCode.INVALID_INPUT,
                f"mask() wants {layout.dtype} of shape ({layout.length},), "
                f"got {encoded.dtype} {encoded.shape}",
            )
        own_id = self._identity.client_id
        masked = np.array(encoded, dtype=layout.dtype, order="C", copy=True)
        add = [self._self_seed]
        add += [seed for peer, seed in self._mask_seeds.items() if peer > own_id]
        subtract = [seed for peer, seed in self._mask_seeds.items() if peer < own_id]
        add_masks(masked, add=add, subtract=subtract)
        message = MaskedInput(session_id=self.session_id, client_id=own_id, values=masked)
        state = ClientConsistencyCheck(
            self._identity, self._session, self._received, self._known_dead
        )
        return ClientStep(state, message)


class ClientConsistencyCheck(ClientState):
    """Phase 2 done: input sent; waits for :class:`ConsistencyRequest`."""

    phase = Phase.CONSISTENCY_CHECK
    expects = (ConsistencyRequest,)

    def __init__(
        self,
        identity: _Identity,
        session: Session,
        received: dict[int, OpenedShare],
        known_dead: frozenset[int],
    ) -> None:
        super().__init__(identity)
        self._session = session
        self._received = received
        self._known_dead = known_dead

    def _handle(self, message: ServerMessage) -> ClientStep:
        assert isinstance(message, ConsistencyRequest)
        session = self._session
        own_id = self._identity.client_id
        if message.session_id != session.session_id:
            raise _AbortError(AbortReason.SESSION_MISMATCH)
        alive = frozenset(message.alive)
        dead = frozenset(message.dead)
        _check_ids(session, alive | dead)
        if alive & dead:
            raise _AbortError(AbortReason.ALIVE_DEAD_OVERLAP)
        if own_id in dead:
            raise _AbortError(AbortReason.SELF_LISTED_DEAD)
        if own_id not in alive:
            raise _AbortError(AbortReason.SELF_NOT_LISTED_ALIVE)
        if alive & self._known_dead:
            raise _AbortError(AbortReason.DEAD_CLIENT_REVIVED)
        if len(alive & session.neighbours(own_id)) < session.threshold:
            raise _AbortError(AbortReason.TOO_FEW_NEIGHBOURS)
        payload = signing.consistency_payload(session_id=session.session_id, survivors=alive)
        signature = signing.sign(self._identity.identity_key, payload)
        outgoing = ConsistencySignature(
            session_id=session.session_id, client_id=own_id, signature=signature
        )
        state = ClientUnmasking(
            self._identity, session, self._received, alive, dead | self._known_dead
        )
        return ClientStep(state, outgoing)


class ClientUnmasking(ClientState):
    """Phase 3 done: survivor set signed; waits for :class:`UnmaskRequest`."""

    phase = Phase.UNMASKING
    expects = (UnmaskRequest,)

    def __init__(
        self,
        identity: _Identity,
        session: Session,
        received: dict[int, OpenedShare],
        alive: frozenset[int],
        dead: frozenset[int],
    ) -> None:
        super().__init__(identity)
        self._session = session
        self._received = received
        self._alive = alive
        self._dead = dead

    def _handle(self, message: ServerMessage) -> ClientStep:
        assert isinstance(message, UnmaskRequest)
        session = self._session
        own_id = self._identity.client_id
        if message.session_id != session.session_id:
            raise _AbortError(AbortReason.SESSION_MISMATCH)
        payload = signing.consistency_payload(session_id=session.session_id, survivors=self._alive)
        signers = set()
        for item in message.signatures:
            _check_ids(session, [item.client_id])
            if item.client_id not in self._alive:
                raise _AbortError(AbortReason.DEAD_CLIENT_REVIVED)
            try:
                signing.verify(session.by_id[item.client_id].identity_key, item.signature, payload)
            except SecAggError as exc:
                raise _AbortError(AbortReason.BAD_SIGNATURE) from exc
            signers.add(item.client_id)
        if len(signers & session.neighbours(own_id)) < session.threshold:
            raise _AbortError(AbortReason.TOO_FEW_SIGNATURES)
        self_mask_shares = []
        key_shares = []
        for owner in sorted(self._received):
            value = self._received[owner]
            # alive and dead were checked disjoint in phase 3: at most one branch runs.
            if owner in self._alive:
                self_mask_shares.append(
                    RevealedShare(owner, shamir.encode_share(value.self_mask_share))
                )
            elif owner in self._dead:
                key_shares.append(RevealedShare(owner, shamir.encode_share(value.key_share)))
        outgoing = UnmaskResponse(
            session_id=session.session_id,
            client_id=own_id,
            self_mask_shares=tuple(self_mask_shares),
            key_shares=tuple(key_shares),
        )
        return ClientStep(ClientCompleted(self._identity, session.session_id), outgoing)


class ClientCompleted(ClientState):
    """Phase 4 done: shares revealed once. A second request aborts."""

    phase = Phase.COMPLETED
    expects = (UnmaskRequest,)

    def __init__(self, identity: _Identity, session_id: bytes) -> None:
        super().__init__(identity)
        self.session_id = session_id

    def _handle(self, message: ServerMessage) -> ClientStep:
        raise _AbortError(AbortReason.SECOND_UNMASK_REQUEST)


class ClientAborted(ClientState):
    """The round is over for this client; ``reason`` says why. Accepts no message."""

    phase = Phase.ABORTED
    live = False

    def __init__(self, identity: _Identity, reason: AbortReason) -> None:
        super().__init__(identity)
        self.reason = reason
