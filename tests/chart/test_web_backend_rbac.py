"""The chart's optional RBAC "for the web backend" (webBackend.enabled): a ServiceAccount that may only
create/get/patch/watch AgentDispatch objects in one namespace. Rendered here; installed and checked
with `kubectl auth can-i` in test_cluster.py; used for real by the stack's reference API
(tests/integration/test_rooms_join.py)."""

from __future__ import annotations

from tests.chart.chartlib import NAMESPACE, RELEASE, Helm, of_kind, one

FULLNAME = f"{RELEASE}-loqua-agents"


def _web(objs: list[dict]) -> list[dict]:
    return [
        o for o in objs if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "web-backend"
    ]


def test_off_by_default(helm: Helm) -> None:
    assert _web(helm.render()) == []


def test_enabled_grants_exactly_create_get_patch_watch_on_agentdispatches(helm: Helm) -> None:
    objs = _web(helm.render({"webBackend": {"enabled": True}}))
    assert sorted(o["kind"] for o in objs) == ["Role", "RoleBinding", "ServiceAccount"]
    sa = one(objs, "ServiceAccount")
    assert sa["metadata"] == {**sa["metadata"], "name": f"{FULLNAME}-web-backend", "namespace": NAMESPACE}
    role = one(objs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {
            "apiGroups": ["agents.loqua.app"],
            "resources": ["agentdispatches"],
            "verbs": ["create", "get", "patch", "watch"],
        }
    ]
    binding = one(objs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{FULLNAME}-web-backend", "namespace": NAMESPACE}
    ]
    assert not of_kind(objs, "ClusterRole") and not of_kind(objs, "ClusterRoleBinding")


def test_objects_in_another_namespace_and_an_existing_service_account(helm: Helm) -> None:
    objs = _web(
        helm.render(
            {
                "webBackend": {
                    "enabled": True,
                    "namespace": "learners",
                    "serviceAccount": {"create": False, "name": "web"},
                }
            }
        )
    )
    assert sorted(o["kind"] for o in objs) == ["Role", "RoleBinding"]
    assert {o["metadata"]["namespace"] for o in objs} == {"learners"}
    assert one(objs, "RoleBinding")["subjects"] == [
        {"kind": "ServiceAccount", "name": "web", "namespace": NAMESPACE}
    ]


def test_schema_refuses_a_bad_namespace(helm: Helm) -> None:
    err = helm.render_error({"webBackend": {"enabled": True, "namespace": "Not_Valid"}})
    assert "webBackend" in err and "namespace" in err
