"""`make demo-cluster`: the main scenario on the local cluster with monitoring, plus one fault.

`make cluster MONITORING=1`, then: an AgentDispatch served by the operator pod, a learner talks
to the tutor pod's agent, the TTL ends it, one session record; then livekit-server is stopped,
the LiveKit-unreachable alert pages (the pager's record), livekit-server is started, the page
resolves. Finally a PNG per key dashboard panel from Prometheus' data, linked from the summary.
The cluster is left running for a look around (`make cluster-down` stops it).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from datetime import datetime

from loqua_devstack import cluster, monitoring, pager, panels, serving
from loqua_devstack.demo import Timeline, run, wait_loop
from loqua_devstack.learner import Learner, create_user, exit_past_rtc_teardown, session_records
from loqua_devstack.stack import Stack, devstack_dir, quiet_dev_secret_warning

ALERT = "LoquaLiveKitUnreachable"


def main() -> int:
    quiet_dev_secret_warning()
    stack = Stack(devstack_dir())
    tl = Timeline()
    t_start = time.time()
    ns = f"demo-{uuid.uuid4().hex[:6]}"
    room = f"{ns}-lesson"
    try:

        def up() -> str:
            installed = cluster.up(stack, with_monitoring=True)
            env = stack.env()
            return (
                f"release {installed.release} in {installed.namespace} ({installed.image}); "
                f"Prometheus {env['PROMETHEUS_URL']}, Alertmanager {env['ALERTMANAGER_URL']}, pager {env['PAGER_URL']}"
            )

        tl.step("make cluster MONITORING=1", up)
        env = stack.env()

        def targets() -> str:
            def up_targets() -> list[str]:
                import httpx

                data = httpx.get(f"{env['PROMETHEUS_URL']}/api/v1/targets", timeout=30).json()["data"]
                return [
                    t["labels"].get("container", t["labels"]["job"])
                    for t in data["activeTargets"]
                    if t["health"] == "up"
                ]

            found = wait_loop(
                lambda: {"loqua-operator", "loqua-tutor"} <= set(up_targets()) and up_targets(), "targets up", 120, 2
            )
            return f"Prometheus scrapes {', '.join(sorted(found))} (from the chart's ServiceMonitor)"

        tl.step("Prometheus targets up", targets)

        def dispatch() -> str:
            stack.kubectl("create", "namespace", ns)
            manifest = serving.ad_manifest(ns, "lesson", room, cluster.AGENT_NAME, ttl=20)
            import subprocess

            subprocess.run(
                ["kubectl", f"--kubeconfig={stack.kubeconfig}", "apply", "-f", "-"],
                input=json.dumps(manifest),
                text=True,
                check=True,
                capture_output=True,
            )

            def bound() -> dict | None:
                out = stack.kubectl("-n", ns, "get", "agentdispatch", "lesson", "-o", "json", check=False)
                obj = json.loads(out.stdout) if out.returncode == 0 else {}
                return obj if obj.get("status", {}).get("dispatchId") else None

            obj = wait_loop(bound, "the operator pod to dispatch", 120, 0.5)
            return f"AgentDispatch {ns}/lesson {obj['status']['phase']} (dispatch {obj['status']['dispatchId']})"

        tl.step("AgentDispatch applied, the operator pod dispatches", dispatch)

        user = create_user(env, "Ana")

        def lesson() -> str:
            async def go() -> str:
                learner = Learner(
                    env,
                    room,
                    user_id=user["user_id"],
                    sessionId=f"sess_{int(time.time() * 1000)}_demo",
                    display_name="Ana",
                )
                await learner.join()
                try:
                    import asyncio

                    deadline = time.monotonic() + 120
                    while not learner.agents_in_room() and time.monotonic() < deadline:
                        await asyncio.sleep(0.5)
                    agents = learner.agents_in_room()
                    if not agents:
                        raise RuntimeError("no tutor joined the room within 120 s")
                    await asyncio.sleep(10)
                    return (
                        f"learner {user['user_id']} with agent {agents[0].identity} ({len(agents)} agent in the room)"
                    )
                finally:
                    await learner.leave()

            return run(go())

        tl.step("a learner talks to the tutor pod's agent", lesson)

        def record() -> str:
            found = wait_loop(lambda: session_records(env, user["user_id"]), "the session record", 180, 1)
            wait_loop(
                lambda: stack.kubectl("-n", ns, "get", "agentdispatch", "lesson", check=False).returncode != 0,
                "the TTL to delete the object",
                180,
                1,
            )
            return f"{len(found['sessions'])} session record stored; the TTL deleted the AgentDispatch"

        tl.step("the session ends, one record", record)

        record_file = monitoring.pager_record(stack.root)
        before = len(pager.read_pages(record_file))
        stopped = time.time()

        def fault() -> str:
            stack.stop_part("livekit")
            page = wait_loop(
                lambda: pager.first_page(pager.read_pages(record_file)[before:], ALERT, "firing"),
                f"the {ALERT} page",
                900,
                2,
            )
            at = datetime.fromisoformat(page["received"]).timestamp()
            severity = page["labels"].get("severity")
            return f"pager: FIRING {ALERT} ({severity}) {at - stopped:.0f} s after `loqua-dev stop livekit`"

        tl.step("fault: livekit-server stopped", fault)
        started = time.time()

        def recover() -> str:
            stack.start_part("livekit")
            page = wait_loop(
                lambda: pager.first_page(pager.read_pages(record_file)[before:], ALERT, "resolved"),
                f"the resolved {ALERT} page",
                900,
                2,
            )
            at = datetime.fromisoformat(page["received"]).timestamp()
            return f"pager: RESOLVED {ALERT} {at - started:.0f} s after `loqua-dev start livekit`"

        tl.step("recovery: livekit-server started", recover)

        def pictures() -> str:
            out = stack.root / "panels"
            written = panels.render(env["PROMETHEUS_URL"], out, cluster.NAMESPACE, t_start, scrape_interval_s=10)
            return "\n".join(str(p) for p in written)

        pngs = tl.step("PNGs of the key dashboard panels", pictures)
    except Exception as exc:
        print(
            f"\ndemo-cluster FAILED: {exc}\nlogs: {stack.root / 'logs'}; `make cluster-down` stops it all",
            file=sys.stderr,
        )
        if stack.load().get("pids", {}).get("livekit") is None:
            stack.start_part("livekit")
        return 1
    finally:
        stack.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    print(tl.summary())
    print("\npages received (loqua-dev pages):")
    print(pager.format_pages(pager.read_pages(monitoring.pager_record(stack.root))[before:]))
    print("\npanels:")
    for line in pngs.splitlines():
        print(f"  file://{line}")
    print("\nThe cluster keeps running; stop it with: make cluster-down")
    return 0


if __name__ == "__main__":
    exit_past_rtc_teardown(main())
