"""VAPID (RFC 8292): the application server's key pair and the `Authorization` it sends.

A push service accepts a Web Push request only with `Authorization: vapid t=<JWT>, k=<key>`:
an ES256 JWT for the push service's origin (`aud`), valid at most 24 hours (`exp`), naming a
contact (`sub`, `[webpush] vapid_subject`), and `k` the uncompressed P-256 public key that
signed it, the same key the browser subscribed with (`applicationServerKey`).

`[webpush] vapid_private_key` holds the private key as PEM, or as the raw 32-byte scalar in
base64url (what `omnipush vapid generate` prints, and what most Web Push libraries use).
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

#: How long a token is valid; RFC 8292 allows at most 24 hours.
TOKEN_SECONDS = 12 * 3600
#: A cached token is made again when less than this is left of it.
RENEW_SECONDS = 3600
#: Origins whose tokens are kept: push services are few, but endpoints come from apps.
MAX_CACHED_TOKENS = 256
_SCALAR_BYTES = 32
_DEFAULT_PORTS = {"https": 443, "http": 80}
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def b64url_encode(data: bytes) -> str:
    """base64url without padding, as Web Push writes keys."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """The bytes of base64url text, padded or not; ValueError when it is not base64url."""
    if not text or any(c not in _B64URL for c in text.rstrip("=")):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as error:
        raise ValueError(f"not base64url: {error}") from None


def public_key_of(encoded: bytes) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from its uncompressed point (65 bytes); ValueError otherwise."""
    if len(encoded) != 65 or encoded[0] != 4:
        raise ValueError("not an uncompressed P-256 point (65 bytes starting with 0x04)")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), encoded)


def uncompressed(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def origin_of(url: str) -> str:
    """The URL's origin as RFC 6454 writes it, the `aud` of its token:
    `https://Push.example.net:443/send/x` -> `https://push.example.net`."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    shown_port = f":{port}" if port is not None and port != _DEFAULT_PORTS.get(scheme) else ""
    return f"{scheme}://{host}{shown_port}"


@dataclass
class VapidKey:
    """An application server's P-256 key pair; it signs the `Authorization` of each request.

    Tokens are cached per origin and made again an hour before they expire: one push service
    sees the same token for hours, as RFC 8292 section 2 expects.
    """

    private_key: ec.EllipticCurvePrivateKey
    _tokens: dict[tuple[str, str | None], tuple[str, float]] = field(
        default_factory=dict, repr=False
    )

    @classmethod
    def generate(cls) -> VapidKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def load(cls, text: str) -> VapidKey:
        """The key `[webpush] vapid_private_key` holds (PEM or raw base64url); ValueError
        saying why when it is neither."""
        text = text.strip()
        if text.startswith("-----BEGIN"):
            try:
                key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
            except (ValueError, TypeError, UnicodeEncodeError) as error:
                raise ValueError(f"not a PEM private key without a password: {error}") from None
        else:
            raw = b64url_decode(text)
            if len(raw) != _SCALAR_BYTES:
                raise ValueError(f"a raw key is {_SCALAR_BYTES} bytes, this is {len(raw)}")
            try:
                key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
            except ValueError as error:
                raise ValueError(f"not a P-256 private key: {error}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("not a P-256 (prime256v1) EC private key")
        return cls(key)

    def private_b64(self) -> str:
        """The private key as raw base64url, for `[webpush] vapid_private_key`."""
        scalar = self.private_key.private_numbers().private_value
        return b64url_encode(scalar.to_bytes(_SCALAR_BYTES, "big"))

    def public_b64(self) -> str:
        """The application server key: the uncompressed public key in base64url."""
        return b64url_encode(uncompressed(self.private_key.public_key()))

    def authorization(self, endpoint: str, subject: str | None, now: float | None = None) -> str:
        """The `Authorization` header value for a request to `endpoint`."""
        moment = time.time() if now is None else now
        audience = origin_of(endpoint)
        cached = self._tokens.get((audience, subject))
        if cached is None or cached[1] - moment < RENEW_SECONDS:
            expires = int(moment) + TOKEN_SECONDS
            claims: dict[str, str | int] = {"aud": audience, "exp": expires}
            if subject:
                claims["sub"] = subject
            token = jwt.encode(claims, self.private_key, algorithm="ES256")
            cached = (token, float(expires))
            if len(self._tokens) >= MAX_CACHED_TOKENS:
                self._tokens.clear()
            self._tokens[(audience, subject)] = cached
        return f"vapid t={cached[0]}, k={self.public_b64()}"
