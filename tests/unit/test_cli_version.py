"""`rayop --version`: the version of the installed distribution, read from its metadata."""

from __future__ import annotations

import configparser
import importlib.metadata
from pathlib import Path

import pytest

from rayop import cli

REPO = Path(__file__).resolve().parents[2]


def test_version_prints_the_installed_metadata_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out == f"rayop {importlib.metadata.version('rayop')}\n"
    # The metadata is the one setup.cfg declares (the checkout's own install, not a stale one).
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    assert out == f"rayop {setup['metadata']['version']}\n"


def test_version_without_metadata_says_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert cli.installed_version() == "unknown"
