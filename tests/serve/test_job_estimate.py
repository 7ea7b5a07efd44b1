"""A running job's `estimated_finish`: the epochs left at the pace since the worker's last start,
and a database made before the column existed gains it."""

from __future__ import annotations

import sqlite3

from tunekit.serve import store
from tunekit.serve.jobs import estimated_finish


def _row(step: int, epoch: float, elapsed: float) -> dict:
    return {"step": step, "epoch": epoch, "elapsed_s": elapsed, "loss": 1.0}


def test_the_epochs_left_at_the_measured_pace():
    rows = [_row(10, 0.1, 10.0), _row(20, 0.2, 20.0), _row(30, 0.3, 30.0)]  # 0.01 epochs a second
    assert estimated_finish(rows, 2.0, at=1000.0) == 1000 + 170


def test_a_resumed_run_is_paced_from_its_restart():
    """elapsed_s restarts with the worker: the slow first run does not count."""
    rows = [_row(10, 0.1, 100.0), _row(20, 0.2, 200.0), _row(30, 0.3, 5.0), _row(40, 0.4, 10.0)]  # then 0.02/s
    assert estimated_finish(rows, 1.0, at=0.0) == 30


def test_no_estimate_before_a_pace_is_known():
    assert estimated_finish([], 1.0, at=0.0) is None
    assert estimated_finish([_row(5, 0.05, 3.0)], 1.0, at=0.0) is None
    assert estimated_finish([_row(5, 0.5, 3.0), _row(6, 0.5, 3.0)], 1.0, at=0.0) is None
    assert estimated_finish([_row(9, 1.0, 3.0), _row(10, 1.0, 4.0)], 1.0, at=7.0) is None  # no progress


def test_an_older_database_gains_the_column(tmp_path):
    db = sqlite3.connect(store.db_path(tmp_path))
    db.executescript(store.SCHEMA.replace(",\n  estimated_finish INTEGER", ""))
    assert "estimated_finish" not in {r[1] for r in db.execute("PRAGMA table_info(jobs)")}
    db.close()
    store.init(tmp_path)
    with store.connect(tmp_path) as db:
        assert "estimated_finish" in {r["name"] for r in db.execute("PRAGMA table_info(jobs)")}
