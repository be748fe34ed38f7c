"""JSON merge patch (RFC 7386), as `dpufleet patch` and PATCH requests apply it."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpufleet.api.patch import merge_patch

# The examples of RFC 7386, appendix A.
RFC_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "expected"), RFC_EXAMPLES)
def test_rfc7386_examples(target: Any, patch: Any, expected: Any) -> None:
    assert merge_patch(target, patch) == expected


SCALARS = st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["", "x", "y"])
KEYS = st.sampled_from(["a", "b", "c", "spec", "labels"])
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=12,
)
OBJECTS = st.dictionaries(KEYS, JSON, max_size=4)


@settings(max_examples=300, deadline=None)
@given(target=OBJECTS)
def test_empty_patch_is_identity(target: dict[str, Any]) -> None:
    assert merge_patch(target, {}) == target


@settings(max_examples=300, deadline=None)
@given(target=JSON, patch=JSON)
def test_applying_a_patch_twice_equals_applying_it_once(target: Any, patch: Any) -> None:
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once


@settings(max_examples=300, deadline=None)
@given(target=OBJECTS, key=KEYS)
def test_null_removes_the_key_and_keeps_the_rest(target: dict[str, Any], key: str) -> None:
    result = merge_patch(target, {key: None})
    assert key not in result
    assert result == {k: v for k, v in target.items() if k != key}


@settings(max_examples=300, deadline=None)
@given(target=JSON, patch=SCALARS | st.lists(JSON, max_size=3))
def test_a_patch_that_is_not_an_object_replaces_the_target(target: Any, patch: Any) -> None:
    assert merge_patch(target, patch) == patch


@settings(max_examples=300, deadline=None)
@given(target=JSON, patch=JSON)
def test_neither_argument_is_modified(target: Any, patch: Any) -> None:
    target_before, patch_before = copy.deepcopy(target), copy.deepcopy(patch)
    merge_patch(target, patch)
    assert target == target_before
    assert patch == patch_before


@settings(max_examples=300, deadline=None)
@given(target=OBJECTS, patch=OBJECTS)
def test_patched_scalars_and_lists_take_the_patch_value(target: dict[str, Any], patch: dict[str, Any]) -> None:
    result = merge_patch(target, patch)
    for key, value in patch.items():
        if value is None:
            assert key not in result
        elif not isinstance(value, dict):
            assert result[key] == value
    for key, value in target.items():
        if key not in patch:
            assert result[key] == value
