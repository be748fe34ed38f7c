"""Malformed agent messages and manifests are refused, never crash anything (hypothesis)."""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpufleet.crypto.signing import ManifestRefused, RefusalReason, parse_signed_manifest

from .conftest import Fleet, enrolled

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)
report_like = st.fixed_dictionaries(
    {},
    optional={
        "serial": st.one_of(st.just("MT0001"), st.text(max_size=200), st.integers()),
        "role": st.one_of(st.sampled_from(["dpu", "host", ""]), json_values),
        "agentVersion": st.one_of(st.text(max_size=100), json_values),
        "hostname": json_values,
        "inventory": json_values,
    },
)
enroll_like = st.fixed_dictionaries(
    {},
    optional={
        "serial": st.one_of(st.text(max_size=140), json_values),
        "role": json_values,
        "csr": st.one_of(
            st.text(max_size=300),
            st.just("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"),
        ),
        "token": st.one_of(st.none(), st.text(max_size=80)),
        "idevid": st.one_of(
            st.none(),
            json_values,
            st.fixed_dictionaries({"certificate": st.text(max_size=80), "signature": st.text(max_size=80)}),
        ),
    },
)
bodies = st.one_of(
    report_like.map(lambda d: json.dumps(d).encode()),
    enroll_like.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
)


def test_malformed_agent_messages_get_4xx_never_5xx(fleet: Fleet) -> None:
    device = enrolled(fleet, "MT0001")
    tls = fleet.tls(device)
    anonymous = fleet.tls()
    with (
        httpx.Client(base_url=fleet.agent_url, verify=tls, timeout=10) as http,
        httpx.Client(base_url=fleet.agent_url, verify=anonymous, timeout=10) as anon,
    ):

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(
            body=bodies,
            path=st.sampled_from(["report", "enroll", "renew"]),
            ctype=st.sampled_from(["application/json", "text/plain"]),
        )
        def check(body: bytes, path: str, ctype: str) -> None:
            for client in (http, anon):
                resp = client.post(f"/agent/v1/{path}", content=body, headers={"content-type": ctype})
                assert resp.status_code < 500, (path, body, resp.text)
                if path == "report" and client is http and resp.status_code == 200:
                    # only a well-formed report for its own device is accepted
                    doc: Any = json.loads(body)
                    assert doc["serial"] == "MT0001" and doc.get("role", "dpu") == "dpu"

        check()


@settings(max_examples=400, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=400),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries({"manifest": json_values, "signatures": json_values}).map(
            lambda d: json.dumps(d).encode()
        ),
    )
)
def test_the_manifest_parser_refuses_garbage_and_never_crashes(data: bytes) -> None:
    try:
        parse_signed_manifest(data)
    except ManifestRefused as exc:
        assert exc.reason == RefusalReason.MALFORMED


def test_deeply_nested_json_is_refused_not_a_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    try:
        parse_signed_manifest(deep)
    except ManifestRefused as exc:
        assert exc.reason == RefusalReason.MALFORMED
