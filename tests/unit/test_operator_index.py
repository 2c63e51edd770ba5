"""The object index: atomic entries, newer versions win, a re-list drops what vanished."""

from __future__ import annotations

from typing import Any

from loqua_operator.index import ObjectIndex
from loqua_operator.model import DispatchKey, ObjectRef


def body(name: str, room: str, rv: str, uid: str = "u", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": name, "uid": f"{uid}-{name}", "resourceVersion": rv},
        "spec": {"room": room, "agentName": "tutor"},
        "status": status,
    }


def test_an_older_event_never_replaces_our_newer_write() -> None:
    index = ObjectIndex(300)
    index.observe(body("a", "r1", "10", phase="Active"))
    index.observe(body("a", "r1", "9", phase="Dispatched"))  # late watch event
    assert index.get(ObjectRef("ns", "a")).status["phase"] == "Active"


def test_room_moves_in_one_step_and_deletes_leave() -> None:
    index = ObjectIndex(300)
    index.observe(body("a", "r1", "1"))
    index.observe(body("b", "r1", "2"))
    assert [o.name for o in index.in_room("r1")] == ["a", "b"]
    index.observe(body("a", "r1", "3"), deleted=True)
    assert [o.name for o in index.in_room("r1")] == ["b"] and len(index) == 1
    assert index.keys() == {DispatchKey("r1", "tutor")}


def test_a_body_without_room_or_agent_is_not_indexed() -> None:
    index = ObjectIndex(300)
    assert index.observe({"metadata": {"namespace": "ns", "name": "x"}, "spec": {}}) is None and len(index) == 0


def test_listing_drops_vanished_objects_but_keeps_ones_added_meanwhile() -> None:
    index = ObjectIndex(300)
    index.observe(body("gone", "r1", "1"))
    index.observe(body("kept", "r2", "2"))
    assert not index.synced.is_set()
    since = index.mark()
    index.observe(body("new", "r3", "5"))  # arrives on the watch while the list is in flight
    vanished = index.merge_listing([body("kept", "r2", "4")], since)
    assert vanished == 1 and index.synced.is_set()
    assert {o.name for o in index.snapshot()} == {"kept", "new"}
    assert index.get(ObjectRef("ns", "kept")).resource_version == "4"
    assert index.in_room("r1") == []


def test_an_object_deleted_while_the_listing_is_in_flight_does_not_come_back() -> None:
    """The listing was taken before the deletion, which reached us (the watch) before the merge: the
    listed body is stale and must not re-add a ghost that pins its dispatch against the orphan sweep."""
    index = ObjectIndex(300)
    index.observe(body("deleted", "r1", "1"))
    since = index.mark()
    index.observe(body("deleted", "r1", "3"), deleted=True)  # the watch's DELETED event
    index.observe(body("never-indexed", "r2", "4"), deleted=True)  # created and deleted meanwhile
    index.merge_listing([body("deleted", "r1", "2"), body("never-indexed", "r2", "3"), body("kept", "r3", "2")], since)
    assert {o.name for o in index.snapshot()} == {"kept"}
    assert index.keys() == {DispatchKey("r3", "tutor")}


def test_a_recreated_object_with_the_same_name_is_kept() -> None:
    index = ObjectIndex(300)
    index.observe(body("a", "r1", "1", uid="old"))
    since = index.mark()
    index.observe(body("a", "r1", "3", uid="old"), deleted=True)
    index.observe(body("a", "r1", "4", uid="new"))  # a new object under the same name
    index.merge_listing([body("a", "r1", "2", uid="old")], since)
    assert index.get(ObjectRef("ns", "a")).uid == "new-a"
    # The next listing starts afresh: the old uid is not remembered for ever.
    since = index.mark()
    index.merge_listing([body("a", "r1", "5", uid="new")], since)
    assert index.get(ObjectRef("ns", "a")).resource_version == "5"
