"""`loqua-dev learner` and the demos end through exit_past_rtc_teardown: its exit code and the
output still buffered in a pipe must reach the caller, with the rtc SDK's native runtime loaded."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from livekit import rtc
from loqua_devstack.learner import exit_past_rtc_teardown
rtc.Room()  # loads liblivekit_ffi and starts its runtime, as a learner's join does
print("left the room", end="")
print("a warning", file=sys.stderr, end="")
exit_past_rtc_teardown(int(sys.argv[1]))
"""


def run(code: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(code)], capture_output=True, text=True, timeout=60)


def test_exit_code_and_buffered_output_survive() -> None:
    for code in (0, 4):
        done = run(code)
        assert done.returncode == code, done.stderr
        assert done.stdout == "left the room"
        assert done.stderr == "a warning"
