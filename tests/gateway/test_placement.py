"""Placement rules: label constraints, engines, publishers, resources, and Bacalhau's scheduling message."""

from __future__ import annotations

import math

import pytest

from gateway.models import NodeRecord
from gateway.placement import Needs, Resources, matches, not_enough_nodes, unsuitable

LABELS = {"zone": "eu", "size": "8", "gpu": "none"}


@pytest.mark.parametrize(("key", "op", "values", "expected"), [
    ("zone", "=", ["eu"], True), ("zone", "==", ["us"], False), ("zone", "!=", ["us"], True),
    ("missing", "!=", ["x"], True), ("zone", "in", ["us", "eu"], True), ("zone", "notin", ["eu"], False),
    ("missing", "notin", ["eu"], True), ("zone", "exists", [], True), ("missing", "exists", [], False),
    ("missing", "!", [], True), ("zone", "!", [], False), ("size", "gt", ["4"], True), ("size", "gt", ["8"], False),
    ("size", "lt", ["10"], True), ("zone", "gt", ["1"], False), ("missing", "lt", ["1"], False),
])
def test_constraint_operators(key: str, op: str, values: list[str], expected: bool) -> None:
    assert matches({"Key": key, "Operator": op, "Values": values}, LABELS) is expected


def needs(**overrides: object) -> Needs:
    spec = {"Constraints": overrides.pop("constraints", []), "Tasks": [{
        "Engine": {"Type": overrides.pop("engine", "wasm")}, "Publisher": {"Type": "s3managed"},
        "Resources": overrides.pop("resources", {}),
        "InputSources": [{"Source": {"Type": kind}, "Target": f"/in/{kind}"} for kind in overrides.pop("sources", [])],
    }]}
    return Needs.of(spec, "500m", "512Mb")


def node(engines: list[str], publishers: list[str], labels: dict[str, str], sources: list[str] = ()) -> NodeRecord:
    return NodeRecord(id="n-1", credential_sha256="", engines=engines, publishers=publishers, labels=labels,
                      storage_sources=list(sources), last_heartbeat=0, create_time=0)


def test_needs_split_constraints_and_preferences_and_take_server_defaults() -> None:
    wanted = needs(constraints=[{"Key": "zone", "Operator": "=", "Values": ["eu"]},
                                {"Key": "favour_size", "Operator": "gt", "Values": ["4"]}])
    assert [c["Key"] for c in wanted.constraints] == ["zone"]
    assert wanted.preferences == ({"Key": "size", "Operator": "gt", "Values": ["4"]},)
    assert wanted.resources == Resources(cpu=0.5, memory=512_000_000)


def test_every_reason_a_node_is_unsuitable_is_given() -> None:
    wanted = needs(engine="docker", constraints=[{"Key": "zone", "Operator": "=", "Values": ["us"]}],
                   resources={"CPU": "4", "Memory": "1Gb"}, sources=["local", "s3", "inline"])
    reasons = unsuitable(node(["wasm"], [], LABELS, ["inline"]), wanted, Resources(cpu=2, memory=2e9, disk=1e9))
    assert reasons == [
        "does not support docker, only wasm",
        "does not support publisher s3managed",
        "does not support input source local, s3",
        "does not match constraint zone=us",
        "not enough CPU: requested 4, available 2",
    ]
    able = node(["docker"], ["s3managed"], {"zone": "us"}, ["inline", "local", "s3"])
    assert unsuitable(able, wanted, Resources.from_capacity({})) == []
    assert Resources.from_capacity({"CPU": 2}).memory == math.inf


def test_the_not_enough_nodes_message_names_each_node() -> None:
    message = not_enough_nodes(3, {"n-2": ["does not support docker, only wasm"], "n-1": [], "n-3": ["x", "y"]})
    assert message.splitlines() == [
        "not enough nodes to run job. requested: 3, available: 3, suitable: 1.",
        "• Node n-2: does not support docker, only wasm",
        "• Node n-3: x; y",
    ]
    assert "no compute node is connected" in not_enough_nodes(1, {})
