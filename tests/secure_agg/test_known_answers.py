"""Known-answer tests from the standards, run through this package's own wrappers."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from secure_agg import ErrorCode, SecAggError, kdf, signing
from secure_agg.prg import Keystream

H = bytes.fromhex


@pytest.mark.parametrize(
    ("scalar", "u", "expected"),
    [
        (  # RFC 7748 section 5.2, first vector
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (  # RFC 7748 section 5.2, second vector
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
    ],
)
def test_x25519_rfc7748_section_5_2(scalar: str, u: str, expected: str) -> None:
    key = X25519PrivateKey.from_private_bytes(H(scalar))
    assert kdf.agree(key, H(u)) == H(expected)


def test_x25519_rfc7748_iterated() -> None:
    k = u = H("09" + "00" * 31)
    after = {}
    for iteration in range(1, 1001):
        k, u = kdf.agree(X25519PrivateKey.from_private_bytes(k), u), k
        after[iteration] = k
    assert after[1] == H("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
    assert after[1000] == H("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")


def test_x25519_rfc7748_section_6_1_diffie_hellman() -> None:
    alice = X25519PrivateKey.from_private_bytes(
        H("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob = X25519PrivateKey.from_private_bytes(
        H("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    )
    alice_public = H("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    bob_public = H("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = H("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert kdf.public_bytes(alice) == alice_public
    assert kdf.public_bytes(bob) == bob_public
    assert kdf.agree(alice, bob_public) == shared
    assert kdf.agree(bob, alice_public) == shared
    # The clamped scalar round-trips through the form Shamir shares.
    rebuilt = kdf.private_key_from_scalar(kdf.private_scalar(alice))
    assert kdf.public_bytes(rebuilt) == alice_public
    assert kdf.private_scalar(alice) < kdf.FIELD_PRIME


def test_x25519_refuses_small_order_point() -> None:
    key = X25519PrivateKey.from_private_bytes(H("77" * 32))
    with pytest.raises(SecAggError) as caught:
        kdf.agree(key, bytes(32))
    assert caught.value.code is ErrorCode.KEY_AGREEMENT_FAILED


@pytest.mark.parametrize(
    ("ikm", "salt", "info", "okm"),
    [
        (  # RFC 5869 A.1, test case 1
            "0b" * 22,
            "000102030405060708090a0b0c",
            "f0f1f2f3f4f5f6f7f8f9",
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
        ),
        (  # RFC 5869 A.3, test case 3: empty salt and info
            "0b" * 22,
            "",
            "",
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
        ),
    ],
)
def test_hkdf_sha256_rfc5869(ikm: str, salt: str, info: str, okm: str) -> None:
    assert kdf.hkdf(H(ikm), salt=H(salt), info=H(info), length=42) == H(okm)


def test_aes256_ctr_nist_sp800_38a_f55() -> None:
    key = H("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    counter = H("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    plaintext = H(
        "6bc1bee22e409f96e93d7e117393172a"
        "ae2d8a571e03ac9c9eb76fac45af8e51"
        "30c81c46a35ce411e5fbc1191a0a52ef"
        "f69f2445df4f9b17ad2b417be66c3710"
    )
    ciphertext = H(
        "601ec313775789a5b7a7f504bbf3d228"
        "f443e3ca4d62b59aca84e990cacaf5c5"
        "2b0930daa23de94ce87017ba2d84988d"
        "dfc9c58db67aada613c2dd08457941a6"
    )
    keystream = bytes(p ^ c for p, c in zip(plaintext, ciphertext, strict=True))
    # Our PRG reads the keystream as little-endian words, filled in two pieces.
    words = np.empty(16, dtype=np.uint32)
    stream = Keystream(key, counter_block=counter)
    stream.fill(words[:5])
    stream.fill(words[5:])
    assert words.astype("<u4").tobytes() == keystream
    wide = np.empty(8, dtype=np.uint64)
    Keystream(key, counter_block=counter).fill(wide)
    assert wide.astype("<u8").tobytes() == keystream


@pytest.mark.parametrize(
    ("secret", "public", "message", "signature"),
    [
        (  # RFC 8032 section 7.1, TEST 1
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
            "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (  # RFC 8032 section 7.1, TEST 2
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
            "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
    ],
)
def test_ed25519_rfc8032(secret: str, public: str, message: str, signature: str) -> None:
    key = Ed25519PrivateKey.from_private_bytes(H(secret))
    assert signing.identity_public_bytes(key) == H(public)
    assert signing.sign(key, H(message)) == H(signature)
    signing.verify(H(public), H(signature), H(message))
    tampered = bytearray(H(signature))
    tampered[0] ^= 1
    with pytest.raises(SecAggError) as caught:
        signing.verify(H(public), bytes(tampered), H(message))
    assert caught.value.code is ErrorCode.BAD_SIGNATURE
