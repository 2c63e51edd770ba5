"""Run the operator and tutor worker as real processes against the local stack (demo, tests, bench)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from loqua_devstack import processes


class ServiceProcess:
    """One child process with a log file, an HTTP health probe and (optionally) a metrics URL."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str],
        log_file: Path,
        health_url: str,
        metrics_url: str = "",
    ) -> None:
        self.name = name
        self.cmd = cmd
        self.env = env
        self.log_file = log_file
        self.health_url = health_url
        self.metrics_url = metrics_url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.health_url, timeout=2) as resp:
                return resp.status, resp.read().decode(errors="replace").strip()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace").strip()
        except (urllib.error.URLError, OSError):
            return 0, ""

    def wait_healthy(self, timeout: float = 60.0, body: str | None = None) -> None:
        """Wait for 200 from the health URL (and ``body`` in it, when given)."""

        def check() -> bool:
            code, text = self.health()
            return code == 200 and (body is None or body in text)

        processes.wait_until(check, self.name, timeout, pid=self.pid, log_file=self.log_file)

    def signal(self, sig: int) -> None:
        if self.proc and self.alive():
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL, like a node dying: no cleanup code runs."""
        self.signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> int | None:
        if not self.proc:
            return None
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def _console_script(name: str) -> str:
    """The console script next to this interpreter (the project's virtualenv), else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed: run `make venv` (pip install -e .)")
    return found


def _console_process(
    script: str, args: list[str], settings: dict[str, str], extra_env: dict[str, str] | None, log_file: Path
) -> ServiceProcess:
    """``script args`` with this environment plus ``settings`` and ``extra_env``, on a free metrics
    port whose ``/healthz`` is the health probe."""
    metrics_port = processes.free_port()
    # HTTP_HOST: their metrics/health (and the operator's webhook) servers listen on loopback only.
    env = {
        **os.environ,
        **settings,
        "METRICS_PORT": str(metrics_port),
        "HTTP_HOST": "127.0.0.1",
        "REGION": "devstack",
        **(extra_env or {}),
    }
    base = f"http://127.0.0.1:{metrics_port}"
    return ServiceProcess(script, [_console_script(script), *args], env, log_file, f"{base}/healthz", f"{base}/metrics")


def operator_process(
    stack_env: dict[str, str],
    log_file: Path,
    namespaces: list[str] | tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
) -> ServiceProcess:
    args = ["run"]
    for ns in namespaces:
        args += ["--namespace", ns]
    settings = {
        "KUBECONFIG": stack_env["KUBECONFIG"],
        "LIVEKIT_URL": stack_env["LIVEKIT_URL"],
        "LIVEKIT_API_KEY": stack_env["LIVEKIT_API_KEY"],
        "LIVEKIT_API_SECRET": stack_env["LIVEKIT_API_SECRET"],
        "WEBHOOK_PORT": stack_env.get("WEBHOOK_PORT", "0"),
    }
    return _console_process("loqua-operator", args, settings, extra_env, log_file)


def tutor_process(
    stack_env: dict[str, str],
    log_file: Path,
    agent_name: str = "",
    extra_env: dict[str, str] | None = None,
) -> ServiceProcess:
    """`loqua-tutor start` against the stack; healthy ("ok" on /healthz) once registered with LiveKit."""
    settings = {
        "LIVEKIT_URL": stack_env["LIVEKIT_URL"],
        "LIVEKIT_API_KEY": stack_env["LIVEKIT_API_KEY"],
        "LIVEKIT_API_SECRET": stack_env["LIVEKIT_API_SECRET"],
        "API_BASE_URL": stack_env["LOQUA_API_URL"],
        "AGENT_JWT_TOKEN": stack_env["AGENT_JWT_TOKEN"],
        "AGENT_ID": stack_env["AGENT_ID"],
        "SHARED_SECRET": stack_env["SHARED_SECRET"],
        "SHARED_SECRET_PAD_BYTE": stack_env.get("SHARED_SECRET_PAD_BYTE", "0x00"),
        "AGENT_NAME": agent_name,
        "HEALTH_PORT": "0",
        "HTTP_HOST": "127.0.0.1",
    }
    return _console_process("loqua-tutor", ["start"], settings, extra_env, log_file)


def kubectl_env(env: dict[str, str]) -> dict[str, str]:
    """The environment for kubectl: the stack's kubeconfig, and a HOME so its cache stays out of the cwd."""
    return {
        "KUBECONFIG": env["KUBECONFIG"],
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
    }


def kubectl(env: dict[str, str], *args: str, input_: str | None = None, check: bool = True) -> str:
    """Run the machine's kubectl against the stack. With ``check``, fail on a non-zero exit and return
    stdout; without, return stdout and stderr together (to read the API server's refusal)."""
    out = subprocess.run(
        ["kubectl", *args],
        input=input_,
        capture_output=True,
        text=True,
        timeout=60,
        env=kubectl_env(env),
    )
    if check and out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout if check else out.stdout + out.stderr


def wait_for(check, what: str, timeout: float, interval: float = 0.2):  # type: ignore[no-untyped-def]
    """Poll ``check()`` until it returns something truthy; return it, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
