"""Shared pytest setup: every test's clients pin server keys (TLS) in a
known-hosts file of that test, never in the user's home, and never in a
file another test's server (another key, maybe the same port) used."""

import pytest


@pytest.fixture(autouse=True)
def private_known_hosts(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGTRANSFER_KNOWN_HOSTS", str(tmp_path / "known_hosts"))
