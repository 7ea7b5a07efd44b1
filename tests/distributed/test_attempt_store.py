"""Which store a process of a torchrun job meets the others in (hardware._attempt_store).

torchrun keeps one store across --max-restarts attempts; a second attempt reading the first's keys
failed to form its group. The end-to-end check is test_dist_resume's restart test; these pin the
decision for each kind of launch without starting one."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch.distributed as dist

from conftest import free_port
from tunekit import hardware

T = timedelta(seconds=10)


@pytest.fixture
def agent_store(monkeypatch):
    """A TCPStore standing in for torchrun's agent, and the environment torchrun gives rank 0."""
    port = free_port()
    server = dist.TCPStore("127.0.0.1", port, 2, is_master=True, timeout=T, wait_for_workers=False)
    for k, v in {"TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_MAX_RESTARTS": "1", "GROUP_WORLD_SIZE": "1",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    return server


def test_each_attempt_of_one_agent_has_its_own_keys(agent_store, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    hardware._attempt_store(T).set("rank_1", "address of a process that died")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    second = hardware._attempt_store(T)
    assert not second.check(["rank_1"])  # the first attempt's address is not this attempt's
    assert agent_store.check(["tunekit/attempt-0/rank_1"])


@pytest.mark.parametrize("env", [{"TORCHELASTIC_MAX_RESTARTS": "0"}, {"TORCHELASTIC_USE_AGENT_STORE": "False"}],
                         ids=["no-restarts", "store-per-attempt"])
def test_torchruns_own_rendezvous_when_no_attempt_can_see_another(agent_store, monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert hardware._attempt_store(T) is None


def test_several_machines_are_told_the_setting_that_makes_restarts_safe(agent_store, monkeypatch, capsys):
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")  # their agents count restarts separately: no shared prefix
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert hardware._attempt_store(T) is None
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in capsys.readouterr().err
