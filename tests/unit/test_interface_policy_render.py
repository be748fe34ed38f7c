"""The instance interface policy as a user writes it (errors that name the field) and as the agent
renders it (meters before output, conntrack in front of IP traffic, ARP left alone)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from dpufleet.agent.network import chain_neighbours, ct_zone, meter_ids, render_chain, render_meters, render_neighbours
from dpufleet.api.agent_network import DesiredChain, DesiredInterface
from dpufleet.api.kinds import DPUServiceChainSpec, DPUServiceInterfaceSpec


def spec(**fields: Any) -> DPUServiceInterfaceSpec:
    return DPUServiceInterfaceSpec.model_validate({"type": "Physical", "port": "p0", **fields})


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"qos": {}}, "maxRateBps, maxRatePps"),
        ({"qos": {"maxRatePps": 10, "burstBits": 8000}}, "burstBits"),
        ({"qos": {"maxRateBps": 10}}, "maxRateBps"),
        ({"conntrack": {"allowOutbound": [{"protocol": "icmp", "port": 80}]}}, "port"),
        ({"conntrack": {"allowInbound": [{"protocol": "tcp", "prefix": "not-a-net"}]}}, "prefix"),
        ({"type": "Tunnel", "port": "gnv0"}, "tunnel"),
        ({"tunnel": {"protocol": "Geneve", "vni": 1, "underlay": "up", "remoteAddress": "203.0.113.9"}}, "tunnel"),
        (
            {"type": "Tunnel", "port": "gnv0", "tunnel": {"protocol": "Geneve", "vni": 1, "underlay": "up"}},
            "remoteDPU, remoteAddress",
        ),
        (
            {
                "type": "Tunnel",
                "port": "gnv0",
                "tunnel": {"protocol": "VXLAN", "vni": 2**24, "underlay": "up", "remoteDPU": "d"},
            },
            "vni",
        ),
    ],
)
def test_a_bad_policy_is_refused_naming_the_field(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError) as caught:
        spec(**fields)
    assert named in str(caught.value)


def iface(name: str, port: str, **fields: Any) -> DesiredInterface:
    return DesiredInterface(name=name, type="Physical", port=port, **fields)


def chain(hops: list[str], **fields: Any) -> DesiredChain:
    body = DPUServiceChainSpec.model_validate({"hops": [{"interface": h} for h in hops], **fields})
    return DesiredChain(name="c", cookie=1, spec=body)


def test_a_metered_interface_meters_what_enters_by_it_and_nothing_else() -> None:
    wire = iface("wire", "p0", qos={"maxRateBps": 10_000_000})
    host = iface("host", "pf0hpf")
    flows = render_chain(chain(["wire", "host"]), {"wire": 1, "host": 2}, {"wire": wire, "host": host})
    (bits, _) = meter_ids([wire, host])["wire"]
    assert flows == [f"priority=100,in_port=1,actions=meter:{bits},output:2", "priority=100,in_port=2,actions=output:1"]
    assert render_meters([wire, host]) == {bits: "kbps burst band=type=drop,rate=10000,burst_size=1000"}


def test_two_rates_take_two_meters_in_two_tables() -> None:
    wire = iface("wire", "p0", qos={"maxRateBps": 8000, "maxRatePps": 100, "burstPackets": 5})
    bits, packets = meter_ids([wire])["wire"]
    assert bits is not None and packets == bits + 1
    flows = render_chain(chain(["wire", "host"], bidirectional=False), {"wire": 1, "host": 2}, {"wire": wire})
    assert flows == [
        f"priority=100,in_port=1,actions=meter:{bits},goto_table:1",
        f"table=1,priority=100,in_port=1,actions=meter:{packets},output:2",
    ]
    assert render_meters([wire])[packets] == "pktps burst band=type=drop,rate=100,burst_size=5"


def test_conntrack_tracks_ip_commits_only_allowed_new_connections_and_drops_the_rest() -> None:
    host = iface("host", "pf0vf1", conntrack={"allowOutbound": [{"protocol": "tcp", "port": 8080}]})
    flows = render_chain(chain(["wire", "host"]), {"wire": 1, "host": 2}, {"host": host})
    zone = ct_zone("host")
    inbound = [f for f in flows if "in_port=1" in f]
    outbound = [f for f in flows if "in_port=2" in f]
    assert "priority=100,in_port=1,actions=output:2" in inbound, "ARP and other non-IP traffic passes"
    assert f"priority=104,in_port=1,ip,ct_state=-trk,actions=ct(zone={zone},table=0)" in inbound
    assert "priority=103,in_port=1,ip,ct_state=+trk+est,actions=output:2" in inbound, "replies pass"
    assert "priority=101,in_port=1,ip,ct_state=+trk,actions=drop" in inbound, "new inbound connections do not"
    assert not any("ct(commit" in f for f in inbound), "no inbound rule allows anything new"
    assert (
        f"priority=102,tcp,in_port=2,tp_dst=8080,ct_state=+trk+new,actions=ct(commit,zone={zone}),output:1" in outbound
    )
    assert "priority=101,in_port=2,ipv6,ct_state=+trk,actions=drop" in outbound, "both families are tracked"


def test_a_rule_that_cannot_meet_the_chains_match_is_left_out() -> None:
    host = iface("host", "pf0vf1", conntrack={"allowOutbound": [{"protocol": "udp"}, {"protocol": "tcp", "port": 22}]})
    flows = render_chain(
        chain(["host", "wire"], match={"protocol": "tcp", "port": 443}), {"wire": 1, "host": 2}, {"host": host}
    )
    assert not any("ct(commit" in f for f in flows), "udp is not tcp, and port 22 is not 443"
    assert any("ct_state=+trk+est" in f and "tp_dst=443" in f for f in flows)


def test_chains_sharing_a_port_share_one_arp_flow_to_all_their_next_hops() -> None:
    """Two chains taking different TCP ports from the wire: one ARP flow from it to both next hops (two
    flows with one match would leave only the last, and each chain would see the other's as drift)."""
    ports = {"wire": 1, "a": 2, "b": 3}
    web = chain(["wire", "a"], match={"protocol": "tcp", "port": 80})
    mail = chain(["wire", "b"], match={"protocol": "tcp", "port": 25})
    assert not any("arp" in f for f in render_chain(web, ports)), "ARP is not in a chain's own flows"
    legs = chain_neighbours(web, ports) + chain_neighbours(mail, ports)
    assert render_neighbours(legs) == [
        "priority=119,in_port=1,arp,actions=output:2,output:3",
        "priority=119,in_port=2,arp,actions=output:1",
        "priority=119,in_port=3,arp,actions=output:1",
    ]
    assert chain_neighbours(chain(["wire", "a"]), ports) == [], "a chain taking everything carries ARP itself"
