"""A part restarted with new settings binds the same ports: the restart waits until they are free."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from loqua_devstack import processes
from loqua_devstack.stack import Stack


def test_restart_waits_for_the_ports_and_names_the_one_still_held(tmp_path: Path) -> None:
    stack = Stack(root=tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        held = holder.getsockname()[1]
        state = {"ports": {"kcm": held}}
        with pytest.raises(RuntimeError, match=rf"kube-controller-manager .* port\(s\) \[{held}\] .* still in use"):
            stack._wait_ports_released("kube-controller-manager", state, timeout=0.5)
    stack._wait_ports_released("kube-controller-manager", state, timeout=5)
    assert processes.port_is_free(held)
