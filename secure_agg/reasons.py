"""Enums for phases, aborts, dropouts and receive outcomes.

Each enum maps one-to-one onto a metric label (its ``value``), so the coordinator and the
agent can count outcomes without string constants of their own.
"""

from __future__ import annotations

import enum

__all__ = ["AbortReason", "DropReason", "Phase", "ReceiveOutcome"]


class Phase(enum.IntEnum):
    """The protocol phases, numbered as in Bonawitz et al. 2017, then the two ends."""

    ADVERTISE_KEYS = 0
    SHARE_KEYS = 1
    MASKED_INPUT = 2
    CONSISTENCY_CHECK = 3
    UNMASKING = 4
    COMPLETED = 5
    ABORTED = 6


class AbortReason(enum.StrEnum):
    """Why a client or the server gave up on a round.

    Client-side reasons (a client refuses to go on):

    * ``SESSION_MISMATCH``: a server message names another round or session.
    * ``TOO_MANY_CLIENTS``: more advertised clients than the quantization was sized for.
    * ``TOO_FEW_NEIGHBOURS``: fewer than t neighbours advertised usable keys, sent shares
      or survived.
    * ``UNSAFE_THRESHOLD``: the round's t is too low for this client's share holders and
      assumed corrupt fraction (:mod:`secure_agg.threshold`), so a lying server could
      rebuild both of its secrets.
    * ``OWN_KEYS_MISSING`` / ``OWN_KEYS_ALTERED``: the broadcast lacks or changes our keys.
    * ``KEY_REUSED``: two advertised entries share an id or a public key.
    * ``BAD_SIGNATURE``: an advertised key set or a survivor-set signature does not verify.
    * ``AEAD_FAILURE``: a share does not decrypt under the pairwise key.
    * ``REFLECTED_SHARE``: a share we sent comes back to us.
    * ``REPLAYED_SHARE``: a share from another session, or a second share from one sender.
    * ``UNEXPECTED_SHARE``: a share for someone else or from a non-neighbour.
    * ``MALFORMED_SHARE``: a share that decrypts but holds no valid field elements.
    * ``UNKNOWN_CLIENT_ID``: a list names a client that never advertised keys.
    * ``ALIVE_DEAD_OVERLAP``: one client is listed both alive and dead.
    * ``SELF_LISTED_DEAD`` / ``SELF_NOT_LISTED_ALIVE``: the lists misplace us.
    * ``DEAD_CLIENT_REVIVED``: a client earlier dead (no share, or listed dead) shows up alive.
    * ``TOO_FEW_SIGNATURES``: fewer than t neighbours signed the survivor set.
    * ``SECOND_UNMASK_REQUEST``: the server asks a second time for shares.
    * ``SERVER_ABORTED``: the server told us the round is over.

    Server-side reasons (the round ends without a sum):

    * ``TOO_FEW_CLIENTS``: fewer than t + 1 clients are left after a phase, so some
      survivor has fewer than t others to rebuild its secrets (the clients count only
      their neighbours' shares and signatures, never their own).
    * ``TOO_FEW_SHARES``: some mask has fewer than t revealed shares.
    * ``INCONSISTENT_SHARES``: revealed shares disagree, or rebuild a secret that does not
      match its commitment (the advertised masking key, or the signed hash of ``b``).
    * ``INCOMPLETE_MASKED_INPUT``: a client's upload was only partly summed.
    * ``CANCELLED``: the coordinator called ``abort``.
    """

    SESSION_MISMATCH = "session_mismatch"
    TOO_MANY_CLIENTS = "too_many_clients"
    TOO_FEW_NEIGHBOURS = "too_few_neighbours"
    UNSAFE_THRESHOLD = "unsafe_threshold"
    OWN_KEYS_MISSING = "own_keys_missing"
    OWN_KEYS_ALTERED = "own_keys_altered"
    KEY_REUSED = "key_reused"
    BAD_SIGNATURE = "bad_signature"
    AEAD_FAILURE = "aead_failure"
    REFLECTED_SHARE = "reflected_share"
    REPLAYED_SHARE = "replayed_share"
    UNEXPECTED_SHARE = "unexpected_share"
    MALFORMED_SHARE = "malformed_share"
    UNKNOWN_CLIENT_ID = "unknown_client_id"
    ALIVE_DEAD_OVERLAP = "alive_dead_overlap"
    SELF_LISTED_DEAD = "self_listed_dead"
    SELF_NOT_LISTED_ALIVE = "self_not_listed_alive"
    DEAD_CLIENT_REVIVED = "dead_client_revived"
    TOO_FEW_SIGNATURES = "too_few_signatures"
    SECOND_UNMASK_REQUEST = "second_unmask_request"
    SERVER_ABORTED = "server_aborted"
    TOO_FEW_CLIENTS = "too_few_clients"
    TOO_FEW_SHARES = "too_few_shares"
    INCONSISTENT_SHARES = "inconsistent_shares"
    INCOMPLETE_MASKED_INPUT = "incomplete_masked_input"
    CANCELLED = "cancelled"


class DropReason(enum.StrEnum):
    """Why the server stopped counting a client as alive (a metric label)."""

    NO_RESPONSE = "no_response"
    """The phase closed before the client's message arrived."""
    CLIENT_ABORTED = "client_aborted"
    """The client sent a :class:`~secure_agg.messages.ClientAbort`."""
    INVALID_MESSAGE = "invalid_message"
    """The client sent a signed message no one can use (an advert with a small-order key)."""


class ReceiveOutcome(enum.StrEnum):
    """What the server did with one received message."""

    ACCEPTED = "accepted"
    """Recorded; for a masked input, a chunk that leaves the input still incomplete."""
    DUPLICATE = "duplicate"
    """Identical to a message already recorded; nothing changed (safe to acknowledge)."""
    INPUT_COMPLETE = "input_complete"
    """The last missing chunk of a client's masked input; the input is fully summed."""
