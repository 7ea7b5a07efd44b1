"""Signal handling outside training: SIGTERM raises where the program is, so cleanup runs."""

from __future__ import annotations

import os
import signal

import pytest

from tunekit import atomic
from tunekit.stopping import Interrupted, deferred, stop_on_signals


def test_sigterm_during_an_atomic_write_leaves_no_temporary_file(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals(), pytest.raises(Interrupted) as caught:
        with atomic.open_write(tmp_path / "out.json") as f:
            f.write("half")
            os.kill(os.getpid(), signal.SIGTERM)
    assert caught.value.exit_code == 143
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before  # handed back


def test_deferred_records_the_first_signal_and_stops_on_the_second():
    with deferred() as pending:
        os.kill(os.getpid(), signal.SIGTERM)
        assert pending.requested and pending.name == "SIGTERM"
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGINT)
