"""Optional OIDC/JWT bearer tokens, verified against a configured issuer's keys (PyJWT).

Configured by `<data-dir>/oidc.yaml`:

    issuer: https://login.example.com/realms/fleet
    audience: dpufleet
    jwksURL: https://login.example.com/realms/fleet/protocol/openid-connect/certs   # or:
    publicKeyFile: /etc/dpufleet/issuer.pem
    rolesClaim: dpufleet_roles      # a list of "role" or "role@project"
    subjectClaim: sub

Signature, issuer, audience, expiry (and not-before) are all checked; `none` and HMAC
algorithms are never accepted, so a public key can never be used as a shared secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from ..api.errors import Unauthorized
from .identity import Grant, GrantError, Identity

OIDC_FILE = "oidc.yaml"
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256")
EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384"}


def algorithms_for(key: Any) -> list[str]:
    """The asymmetric algorithms a key can verify, so a token's `alg` never reaches a key of another family
    (PyJWT raises TypeError, not a PyJWTError, for e.g. an ES256 token checked with an RSA key)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return list(RSA_ALGORITHMS)
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = EC_ALGORITHMS.get(key.curve.name)
        return [alg] if alg else []
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ["EdDSA"]
    return []


@dataclass(frozen=True)
class OIDCConfig:
    issuer: str
    audience: str
    jwks_url: str | None = None
    public_key_file: str | None = None
    roles_claim: str = "dpufleet_roles"
    subject_claim: str = "sub"

    @classmethod
    def load(cls, data_dir: Path) -> OIDCConfig | None:
        path = data_dir / OIDC_FILE
        if not path.exists():
            return None
        raw = yaml.safe_load(path.read_text()) or {}
        if not raw.get("issuer") or not raw.get("audience"):
            raise ValueError(f"{path}: issuer and audience are required")
        if not raw.get("jwksURL") and not raw.get("publicKeyFile"):
            raise ValueError(f"{path}: set jwksURL or publicKeyFile")
        return cls(
            str(raw["issuer"]),
            str(raw["audience"]),
            raw.get("jwksURL"),
            raw.get("publicKeyFile"),
            str(raw.get("rolesClaim", "dpufleet_roles")),
            str(raw.get("subjectClaim", "sub")),
        )


def looks_like_jwt(token: str) -> bool:
    return token.startswith("ey") and token.count(".") == 2


class OIDCVerifier:
    def __init__(self, config: OIDCConfig) -> None:
        import jwt

        self.config = config
        self._jwks = jwt.PyJWKClient(config.jwks_url, cache_keys=True) if config.jwks_url else None
        self._key: Any = None
        if config.public_key_file:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            self._key = load_pem_public_key(Path(config.public_key_file).read_bytes())

    def verify(self, token: str) -> Identity:
        import jwt

        try:
            key = self._jwks.get_signing_key_from_jwt(token).key if self._jwks is not None else self._key
            algorithms = algorithms_for(key)
            if not algorithms:
                raise Unauthorized("the OIDC token is not valid: the issuer's key type is not supported")
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.config.audience,
                issuer=self.config.issuer,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the OIDC token is not valid: {exc}") from None
        except (TypeError, ValueError) as exc:  # PyJWT's own key/alg mismatches: a bad token, never a 500
            raise Unauthorized(f"the OIDC token is not valid: {exc}") from None
        subject = claims.get(self.config.subject_claim)
        if not subject:
            raise Unauthorized(f"the OIDC token has no {self.config.subject_claim!r} claim")
        raw = claims.get(self.config.roles_claim) or []
        if isinstance(raw, str):
            raw = raw.split()
        try:
            grants = tuple(Grant.parse(g) for g in raw)
        except GrantError as exc:
            raise Unauthorized(f"the OIDC token's {self.config.roles_claim!r} claim: {exc}") from None
        expires = datetime.fromtimestamp(int(claims["exp"]), UTC)
        return Identity(f"oidc:{subject}", grants, None, "oidc", expires)
