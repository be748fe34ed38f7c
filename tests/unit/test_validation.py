"""Names, labels and documents: what is accepted, and errors that name the offending field."""

from __future__ import annotations

from typing import Any

import pytest

from dpufleet.api.errors import BadRequest, Invalid
from dpufleet.api.kinds import REGISTRY, lookup
from dpufleet.api.meta import check_label_key, check_labels, check_name, check_project
from dpufleet.api.validation import validate_document, validate_status

SHA = "0" * 64


@pytest.mark.parametrize("name", ["a", "dpu-01", "rack1.dpu-7", "0abc", "a" * 253, "a.b.c"])
def test_dns1123_names_are_accepted(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "DPU1", "dpu_1", "-dpu", "dpu-", "dpu..1", ".dpu", "dpu 1", "dpü", "a" * 254, "a/b"]
)
def test_names_that_are_not_dns1123_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        check_name(name)


@pytest.mark.parametrize("project", ["default", "team-a", "a" * 63])
def test_projects_are_dns1123_labels(project: str) -> None:
    assert check_project(project) == project


@pytest.mark.parametrize("project", ["Team", "a.b", "a" * 64, "-a", ""])
def test_bad_projects_are_refused(project: str) -> None:
    with pytest.raises(ValueError):
        check_project(project)


@pytest.mark.parametrize("key", ["app", "dpufleet.io/rack", "a_b.c-d", "A1", "x" * 63, "example.com/" + "x" * 63])
def test_label_keys_accepted(key: str) -> None:
    assert check_label_key(key) == key


@pytest.mark.parametrize("key", ["", "/app", "-app", "app-", "x" * 64, "Bad_Prefix/app", "a/b/c", "sp ace"])
def test_label_keys_refused(key: str) -> None:
    with pytest.raises(ValueError, match="label key"):
        check_label_key(key)


def test_label_values_may_be_empty_but_not_long_or_odd() -> None:
    assert check_labels({"a": "", "b": "x.y_z-1"}) == {"a": "", "b": "x.y_z-1"}
    for bad in ("x" * 64, "-x", "x y", "x/y"):
        with pytest.raises(ValueError, match="label 'a'"):
            check_labels({"a": bad})


def _invalid(doc: Any) -> Invalid:
    with pytest.raises(Invalid) as err:
        validate_document(doc)
    return err.value


def _fields(err: Invalid) -> dict[str, str]:
    return {cause["field"]: cause["message"] for cause in err.details["causes"]}


def test_unknown_spec_field_is_named() -> None:
    err = _invalid({"kind": "DPU", "metadata": {"name": "d1"}, "spec": {"hostRef": "h1", "colour": "red"}})
    assert _fields(err) == {"spec.colour": "unknown field"}
    assert "spec.colour" in err.message and err.code == 422


def test_unknown_metadata_field_is_named() -> None:
    err = _invalid({"kind": "DPU", "metadata": {"name": "d1", "namespace": "x"}})
    assert _fields(err) == {"metadata.namespace": "unknown field"}


def test_wrong_type_is_named() -> None:
    err = _invalid({"kind": "DPUFlavor", "metadata": {"name": "f"}, "spec": {"hugepages": [{"count": "many"}]}})
    assert list(_fields(err)) == ["spec.hugepages[0].count"]


def test_missing_required_field_is_named() -> None:
    err = _invalid({"kind": "BMC", "metadata": {"name": "b1"}, "spec": {"verifyTLS": False}})
    assert _fields(err) == {"spec.address": "required field is missing"}


def test_field_validator_message_reaches_the_user() -> None:
    err = _invalid({"kind": "BMC", "metadata": {"name": "b1"}, "spec": {"address": "ftp://x"}})
    assert "http" in _fields(err)["spec.address"]


def test_nested_list_field_is_named_with_its_index() -> None:
    comps = [
        {"name": "os", "type": "os", "version": "1", "sha256": SHA},
        {"name": "fw", "type": "os", "version": "1", "sha256": "nothex"},
    ]
    err = _invalid({"kind": "Image", "metadata": {"name": "i"}, "spec": {"version": "1", "components": comps}})
    assert list(_fields(err)) == ["spec.components[1].sha256"]


def test_bad_name_is_named() -> None:
    err = _invalid({"kind": "Host", "metadata": {"name": "Host_1"}})
    fields = _fields(err)
    assert list(fields) == ["metadata.name"]
    assert "DNS-1123" in fields["metadata.name"]


def test_every_error_is_reported_at_once() -> None:
    err = _invalid({"kind": "DPU", "metadata": {"name": "BAD", "labels": {"-x": "y"}}, "spec": {"held": [1], "zzz": 1}})
    assert set(_fields(err)) == {"metadata.name", "metadata.labels", "spec.held", "spec.zzz"}


def test_missing_kind_is_invalid() -> None:
    assert _fields(_invalid({"metadata": {"name": "x"}})) == {"kind": "missing"}


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"kind": "Toaster", "metadata": {"name": "t"}}, "unknown kind 'Toaster'"),
        ({"kind": "dpu", "metadata": {"name": "t"}}, "did you mean 'DPU'"),
        ({"kind": "DPU", "apiVersion": "v1", "metadata": {"name": "t"}}, "apiVersion"),
        (["not", "a", "mapping"], "mapping"),
    ],
)
def test_unusable_documents_are_bad_requests(doc: Any, needle: str) -> None:
    with pytest.raises(BadRequest, match=needle):
        validate_document(doc)


def test_document_for_another_kind_is_refused_by_a_kind_endpoint() -> None:
    with pytest.raises(BadRequest, match="serves 'DPU'"):
        validate_document({"kind": "Host", "metadata": {"name": "h"}}, kind=lookup("DPU"))


def test_valid_document_is_normalised_with_defaults() -> None:
    info, doc = validate_document({"kind": "DPU", "metadata": {"name": "d1"}})
    assert info.kind == "DPU"
    assert doc["apiVersion"] == "dpufleet.io/v1alpha1"
    assert doc["metadata"]["project"] == "default"
    assert doc["spec"]["held"] is False


def test_every_kind_validates_a_minimal_document() -> None:
    minimal: dict[str, dict[str, Any]] = {
        "BMC": {"spec": {"address": "http://127.0.0.1:1"}},
        "Image": {
            "spec": {"version": "1", "components": [{"name": "os", "type": "os", "version": "1", "sha256": SHA}]}
        },
        "Event": {"involvedObject": {"kind": "DPU", "name": "d"}, "reason": "Test"},
    }
    for kind in ("Host", "BMC", "DPU", "Image", "DPUFlavor", "DPUSet", "Event"):
        assert kind in REGISTRY
        info, doc = validate_document({"kind": kind, "metadata": {"name": "x"}, **minimal.get(kind, {})})
        assert info.kind == kind == doc["kind"]


def test_status_keeps_unknown_fields_but_checks_known_ones() -> None:
    info = lookup("DPU")
    assert validate_status(info, {"phase": "Ready", "futureField": 1})["futureField"] == 1
    with pytest.raises(Invalid) as err:
        validate_status(info, {"conditions": [{"type": "Ready", "status": "Maybe"}]})
    assert err.value.details["causes"][0]["field"] == "status.conditions[0].status"
    with pytest.raises(BadRequest, match="no status"):
        validate_status(lookup("Event"), {})
