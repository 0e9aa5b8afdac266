"""The session id binds the round, the parameters, the model and every advertised key."""

from __future__ import annotations

import dataclasses

from secure_agg import AdvertiseKeys, SecAggParams, SessionConfig, compute_session_id
from secure_agg.session import Session, self_mask_seed

from .harness import make_config


def _keys() -> tuple[AdvertiseKeys, ...]:
    return tuple(
        AdvertiseKeys(
            round_id="round-1",
            client_id=cid,
            identity_key=bytes([cid]) * 32,
            encryption_key=bytes([cid + 50]) * 32,
            masking_key=bytes([cid + 100]) * 32,
            self_mask_commitment=bytes([cid + 200]) * 32,
            signature=bytes([cid + 150]) * 64,
        )
        for cid in (1, 2, 3, 4)
    )


def test_session_id_is_order_independent_and_binds_everything() -> None:
    config = make_config(delta_length=4, threshold=2, degree=None)
    keys = _keys()
    reference = compute_session_id(config, keys)
    assert len(reference) == 32
    assert compute_session_id(config, tuple(reversed(keys))) == reference
    variants = [
        (dataclasses.replace(config, round_id="round-2"), keys),
        (dataclasses.replace(config, model_hash=b"\x01" * 32), keys),
        (
            dataclasses.replace(
                config, params=SecAggParams(threshold=3, degree=None, layout=config.params.layout)
            ),
            keys,
        ),
        (config, keys[:3]),
    ]
    for field in (
        "identity_key",
        "encryption_key",
        "masking_key",
        "self_mask_commitment",
        "signature",
    ):
        changed = dataclasses.replace(keys[2], **{field: b"\xff" + getattr(keys[2], field)[1:]})
        variants.append((config, (*keys[:2], changed, keys[3])))
    ids = {compute_session_id(c, k) for c, k in variants}
    assert reference not in ids
    assert len(ids) == len(variants)


def test_session_derives_graph_and_self_mask_seeds() -> None:
    config: SessionConfig = make_config(delta_length=4, threshold=2, degree=2)
    session = Session(config, _keys())
    assert session.clients == frozenset({1, 2, 3, 4})
    assert all(len(session.neighbours(c)) == 2 for c in session.clients)
    seeds = {self_mask_seed(session_id=session.session_id, client_id=c, secret=7) for c in (1, 2)}
    assert len(seeds) == 2
    other = self_mask_seed(session_id=bytes(32), client_id=1, secret=7)
    assert other not in seeds
