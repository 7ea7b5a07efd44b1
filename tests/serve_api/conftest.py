"""The `server` fixture: one `tunekit serve` per test module (see api_server.py)."""

from __future__ import annotations

import pytest
from api_server import make_key, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for a test module, with keys for owners alice and bob; at most one job waits."""
    tmp = tmp_path_factory.mktemp("serve")
    home = tmp / "home"
    keys = {"alice": make_key(home, "alice"), "bob": make_key(home, "bob")}
    with running_server(home, tmp / "server.log", "--max-queue", "1", "--max-upload-mb", "1") as srv:
        srv.keys = keys
        yield srv
