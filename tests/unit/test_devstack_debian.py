"""The one installer of Debian packages: what it checks, and that it names what is wrong."""

from __future__ import annotations

import pytest

from loqua_devstack import debian


def test_dpkg_itself_is_installed_and_a_made_up_package_is_not() -> None:
    assert debian.installed("dpkg")
    assert not debian.installed("loqua-no-such-package")


def test_unknown_group_names_the_known_ones() -> None:
    with pytest.raises(debian.DebianError, match="unknown package groups \\['nope'\\]; groups are: browser"):
        debian.ensure(["nope"])


def test_nothing_to_do_when_everything_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian, "installed", lambda package: True)
    monkeypatch.setattr(debian, "_apt", lambda *a: pytest.fail("apt-get must not run"))
    assert debian.ensure() == []


def test_without_root_it_says_what_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian, "installed", lambda package: package != "chromium")
    monkeypatch.setattr(debian.os, "geteuid", lambda: 1000)
    with pytest.raises(debian.DebianError, match="needs root; run: sudo apt-get install -y chromium"):
        debian.ensure(["browser"])
