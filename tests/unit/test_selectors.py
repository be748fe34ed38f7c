"""Label selectors: the kubectl string form, each operator, and the properties users rely on."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpufleet.api.selectors import LabelSelector, Operator, Requirement, SelectorError, parse_selector

DPU = {"vendor": "nvidia", "model": "bf3", "dpufleet.io/rack": "r1"}


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("vendor=nvidia", DPU, True),
        ("vendor==nvidia", DPU, True),
        ("vendor=intel", DPU, False),
        ("vendor!=intel", DPU, True),
        ("vendor!=nvidia", DPU, False),
        ("missing!=x", DPU, True),  # != also matches objects without the key, as in Kubernetes
        ("vendor in (intel,nvidia)", DPU, True),
        ("vendor in (intel, amd)", DPU, False),
        ("missing in (x)", DPU, False),
        ("vendor notin (intel,amd)", DPU, True),
        ("vendor notin (nvidia)", DPU, False),
        ("missing notin (x)", DPU, True),
        ("model", DPU, True),
        ("missing", DPU, False),
        ("!missing", DPU, True),
        ("!model", DPU, False),
        ("dpufleet.io/rack=r1", DPU, True),
        ("vendor=nvidia,model=bf3,!missing", DPU, True),
        ("vendor=nvidia,model=bf2", DPU, False),
        (" vendor = nvidia , model in ( bf3 ) ", DPU, True),
        ("vendor=nvidia,vendor=intel", DPU, False),  # both must hold: no object matches
    ],
)
def test_each_operator_selects_what_kubectl_would(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(text).matches(labels) is expected


def test_parsed_selector_has_the_structured_form() -> None:
    sel = parse_selector("vendor=nvidia,model in (bf2,bf3),!held,rack")
    assert sel.matchLabels == {"vendor": "nvidia"}
    assert [(r.key, r.operator, r.values) for r in sel.matchExpressions] == [
        ("model", Operator.IN, ["bf2", "bf3"]),
        ("held", Operator.DOES_NOT_EXIST, []),
        ("rack", Operator.EXISTS, []),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "vendor in nvidia",  # set without parentheses
        "vendor in ()",  # In needs a value
        "vendor notin ()",
        "vendor=(x)",
        "=nvidia",
        "a b",
        "a,,b",
        "-bad=x",  # key must start with an alphanumeric
        "UPPER.prefix/x=y",  # prefix must be a DNS-1123 subdomain
        "vendor in (a",
        "!",
    ],
)
def test_bad_syntax_is_refused_quoting_the_selector(text: str) -> None:
    with pytest.raises(SelectorError) as err:
        parse_selector(text)
    assert "label selector" in str(err.value)


@pytest.mark.parametrize("text", [None, "", "   "])
def test_empty_selector_text_selects_everything(text: str | None) -> None:
    sel = parse_selector(text)
    assert sel.is_empty()
    assert sel.matches({}) and sel.matches(DPU)


def test_requirement_refuses_inconsistent_values() -> None:
    with pytest.raises(ValueError, match="needs at least one value"):
        Requirement(key="a", operator=Operator.IN, values=[])
    with pytest.raises(ValueError, match="takes no values"):
        Requirement(key="a", operator=Operator.EXISTS, values=["x"])


# --- properties -----------------------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "dpufleet.io/rack", "x_y.z"])
VALUES = st.sampled_from(["", "1", "v", "w-2", "A.b_c"])
LABELS = st.dictionaries(KEYS, VALUES, max_size=5)


@st.composite
def requirements(draw: st.DrawFn) -> Requirement:
    op = draw(st.sampled_from(list(Operator)))
    values = draw(st.lists(VALUES, min_size=1, max_size=3, unique=True)) if op in (Operator.IN, Operator.NOT_IN) else []
    return Requirement(key=draw(KEYS), operator=op, values=values)


SELECTORS = st.builds(
    LabelSelector,
    matchLabels=st.dictionaries(KEYS, VALUES, max_size=3),
    matchExpressions=st.lists(requirements(), max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(sel=SELECTORS, labels=LABELS)
def test_string_form_round_trips_to_the_same_selection(sel: LabelSelector, labels: dict[str, str]) -> None:
    """A selector printed by `dpufleet get -l` and parsed back selects exactly the same objects."""
    assert parse_selector(sel.to_string()).matches(labels) == sel.matches(labels)


@settings(max_examples=200, deadline=None)
@given(key=KEYS, values=st.lists(VALUES, min_size=1, max_size=3), labels=LABELS)
def test_notin_is_the_complement_of_in(key: str, values: list[str], labels: dict[str, str]) -> None:
    inside = Requirement(key=key, operator=Operator.IN, values=values)
    outside = Requirement(key=key, operator=Operator.NOT_IN, values=values)
    assert outside.matches(labels) is not inside.matches(labels)


@settings(max_examples=200, deadline=None)
@given(key=KEYS, labels=LABELS)
def test_does_not_exist_is_the_complement_of_exists(key: str, labels: dict[str, str]) -> None:
    exists = Requirement(key=key, operator=Operator.EXISTS)
    absent = Requirement(key=key, operator=Operator.DOES_NOT_EXIST)
    assert absent.matches(labels) is not exists.matches(labels)


@settings(max_examples=100, deadline=None)
@given(labels=LABELS)
def test_empty_selector_matches_every_label_set(labels: dict[str, str]) -> None:
    assert LabelSelector().matches(labels)


@settings(max_examples=200, deadline=None)
@given(sel=SELECTORS, extra=requirements(), labels=LABELS)
def test_adding_a_requirement_never_selects_more(
    sel: LabelSelector, extra: Requirement, labels: dict[str, str]
) -> None:
    narrower = LabelSelector(matchLabels=sel.matchLabels, matchExpressions=[*sel.matchExpressions, extra])
    if narrower.matches(labels):
        assert sel.matches(labels)


def test_empty_label_value_in_a_set_round_trips() -> None:
    """`a=` selects the empty value, so `a in (,x)` must too: empty is a valid label value."""
    sel = LabelSelector(matchExpressions=[Requirement(key="tier", operator=Operator.IN, values=["", "gold"])])
    assert sel.matches({"tier": ""})
    reparsed = parse_selector(sel.to_string())
    assert reparsed.matches({"tier": ""})
    assert reparsed.matches({"tier": "gold"})
    assert not reparsed.matches({"tier": "silver"})
