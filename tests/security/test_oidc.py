"""OIDC bearer tokens over real HTTP: `<data-dir>/oidc.yaml` with a public key file, JWTs signed with PyJWT."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from support.server import BASE, RunningServer, threaded_server

ISSUER = "https://login.example.test/realms/fleet"
AUDIENCE = "dpufleet"
ROLES = "dpufleet_roles"


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def issuer_key() -> rsa.RSAPrivateKey:
    return _rsa()


@pytest.fixture(scope="module")
def oidc_api(tmp_path_factory: pytest.TempPathFactory, issuer_key: rsa.RSAPrivateKey) -> Iterator[RunningServer]:
    """A server whose data dir holds oidc.yaml (written before Server.build, which reads it once)."""
    root = tmp_path_factory.mktemp("oidc")
    pem = root / "issuer.pem"
    pem.write_bytes(
        issuer_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    data_dir = root / "data"
    data_dir.mkdir()
    config = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "publicKeyFile": str(pem),
        "rolesClaim": ROLES,
        "subjectClaim": "sub",
    }
    (data_dir / "oidc.yaml").write_text(yaml.safe_dump(config))
    with threaded_server(data_dir, controllers=False) as running:
        with running.client() as admin:
            body = {"kind": "Project", "metadata": {"name": "proj", "project": "proj"}}
            assert admin.post(f"{BASE}/projects/proj/projects", json=body).status_code == 201
            dpu = {"kind": "DPU", "metadata": {"name": "proj-dpu-1"}, "spec": {"serialNumber": "MTOIDC1"}}
            assert admin.post(f"{BASE}/projects/proj/dpus", json=dpu).status_code == 201
        yield running


def claims(**overrides: Any) -> dict[str, Any]:
    stamp = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": stamp,
        "nbf": stamp - 5,
        "exp": stamp + 300,
        ROLES: ["viewer@proj"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: Any, payload: dict[str, Any], algorithm: str = "RS256") -> str:
    return jwt.encode(payload, key, algorithm=algorithm)


def bearer(api: RunningServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=10.0)


def new_dpu(name: str) -> dict[str, Any]:
    return {"kind": "DPU", "metadata": {"name": name}, "spec": {"serialNumber": f"SN-{name}"}}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any], alg: str = "none") -> str:
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(payload).encode())}."


def hmac_signed_with_public_key(public_pem: bytes, payload: dict[str, Any]) -> str:
    """The classic key-confusion attack: HS256 'signed' with the issuer's public key as the secret."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + _b64(json.dumps(payload).encode())
    mac = hmac.new(public_pem, head.encode(), hashlib.sha256).digest()
    return f"{head}.{_b64(mac)}"


def assert_401(api: RunningServer, token: str, *fragments: str) -> None:
    with bearer(api, token) as client:
        response = client.get(f"{BASE}/projects/proj/dpus")
    assert response.status_code == 401, response.text
    message = response.json()["message"]
    assert "OIDC token is not valid" in message, message
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message


def test_an_admin_token_from_the_issuer_has_full_rights(oidc_api: RunningServer, issuer_key: rsa.RSAPrivateKey) -> None:
    token = sign(issuer_key, claims(sub="root-op", **{ROLES: ["admin"]}))
    with bearer(oidc_api, token) as client:
        who = client.get("/auth/v1/whoami").json()
        assert who["subject"] == "oidc:root-op"
        assert who["via"] == "oidc"
        assert who["grants"] == [{"role": "admin", "project": None}]
        assert who["expiresAt"] is not None
        created = client.post(f"{BASE}/projects/proj/dpus", json=new_dpu("by-oidc-admin"))
        assert created.status_code == 201, created.text
        assert client.get("/auth/v1/tokens").status_code == 200


def test_a_project_viewer_reads_its_project_and_cannot_write(
    oidc_api: RunningServer, issuer_key: rsa.RSAPrivateKey
) -> None:
    token = sign(issuer_key, claims(sub="bob", **{ROLES: ["viewer@proj"]}))
    with bearer(oidc_api, token) as client:
        who = client.get("/auth/v1/whoami").json()
        assert who["subject"] == "oidc:bob"
        assert who["grants"] == [{"role": "viewer", "project": "proj"}]
        listed = client.get(f"{BASE}/projects/proj/dpus")
        assert listed.status_code == 200, listed.text
        assert "proj-dpu-1" in {d["metadata"]["name"] for d in listed.json()["items"]}
        refused = client.post(f"{BASE}/projects/proj/dpus", json=new_dpu("by-oidc-viewer"))
        assert refused.status_code == 403, refused.text
        assert client.get("/auth/v1/tokens").status_code == 403
    with bearer(oidc_api, oidc_api.token) as admin:
        assert admin.get(f"{BASE}/projects/proj/dpus/by-oidc-viewer").status_code == 404


def test_roles_given_as_a_space_separated_string_are_accepted(
    oidc_api: RunningServer, issuer_key: rsa.RSAPrivateKey
) -> None:
    token = sign(issuer_key, claims(sub="carol", **{ROLES: "viewer@proj operator@other"}))
    with bearer(oidc_api, token) as client:
        grants = client.get("/auth/v1/whoami").json()["grants"]
    assert grants == [{"role": "viewer", "project": "proj"}, {"role": "operator", "project": "other"}]


def test_an_ec_signed_token_is_refused_when_the_issuer_key_is_rsa(oidc_api: RunningServer) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    assert_401(oidc_api, sign(other, claims(), "ES256"))


def test_an_expired_token_is_401(oidc_api: RunningServer, issuer_key: rsa.RSAPrivateKey) -> None:
    stamp = int(time.time())
    token = sign(issuer_key, claims(iat=stamp - 600, nbf=stamp - 600, exp=stamp - 60))
    assert_401(oidc_api, token, "expired")


def test_a_token_without_expiry_is_401(oidc_api: RunningServer, issuer_key: rsa.RSAPrivateKey) -> None:
    token = sign(issuer_key, {k: v for k, v in claims().items() if k != "exp"})
    assert_401(oidc_api, token, "exp")


def test_a_token_not_yet_valid_is_401(oidc_api: RunningServer, issuer_key: rsa.RSAPrivateKey) -> None:
    token = sign(issuer_key, claims(nbf=int(time.time()) + 600))
    assert_401(oidc_api, token, "not yet valid")


def test_a_wrong_issuer_is_401(oidc_api: RunningServer, issuer_key: rsa.RSAPrivateKey) -> None:
    assert_401(oidc_api, sign(issuer_key, claims(iss="https://evil.example.test")), "issuer")


def test_a_wrong_audience_is_401(oidc_api: RunningServer, issuer_key: rsa.RSAPrivateKey) -> None:
    assert_401(oidc_api, sign(issuer_key, claims(aud="someone-else")), "audience")


def test_a_token_signed_by_another_key_is_401(oidc_api: RunningServer) -> None:
    assert_401(oidc_api, sign(_rsa(), claims(**{ROLES: ["admin"]})), "signature")


def test_alg_none_is_401(oidc_api: RunningServer) -> None:
    token = unsigned(claims(**{ROLES: ["admin"]}))
    assert token.startswith("ey") and token.count(".") == 2
    assert_401(oidc_api, token, "alg")


def test_hmac_signed_with_the_public_key_is_401(oidc_api: RunningServer, issuer_key: rsa.RSAPrivateKey) -> None:
    pem = issuer_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert_401(oidc_api, hmac_signed_with_public_key(pem, claims(**{ROLES: ["admin"]})), "alg")


def test_a_bad_roles_claim_is_401(oidc_api: RunningServer, issuer_key: rsa.RSAPrivateKey) -> None:
    token = sign(issuer_key, claims(**{ROLES: ["emperor"]}))
    with bearer(oidc_api, token) as client:
        response = client.get(f"{BASE}/projects/proj/dpus")
    assert response.status_code == 401
    assert ROLES in response.json()["message"]


def test_a_token_without_subject_is_401(oidc_api: RunningServer, issuer_key: rsa.RSAPrivateKey) -> None:
    token = sign(issuer_key, claims(sub=None))
    with bearer(oidc_api, token) as client:
        response = client.get(f"{BASE}/projects/proj/dpus")
    assert response.status_code == 401
    assert "'sub'" in response.json()["message"]


def test_api_tokens_keep_working_next_to_oidc(oidc_api: RunningServer) -> None:
    with oidc_api.client() as admin:
        assert admin.get("/auth/v1/whoami").json()["via"] == "bootstrap"


def test_the_config_file_is_read_from_the_data_dir(oidc_api: RunningServer) -> None:
    assert Path(oidc_api.data_dir / "oidc.yaml").exists()
