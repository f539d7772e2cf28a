"""``--address``: a cluster that cannot be joined is one line and exit 2, found before Ray's own
retries; joining a cluster without token authentication is said on one line."""

from __future__ import annotations

import socket

import pytest
from typer.testing import CliRunner

from pclab import cli
from pclab.sweep import RayClusterError, _check_reachable

raylet = pytest.importorskip("ray._raylet")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("address, needle", [("nonsense", "expected HOST:PORT of a Ray head node, got 'nonsense'"),
                                             ("127.0.0.1:x", "expected HOST:PORT"),
                                             (None, "no Ray head node answers there")])
def test_an_address_that_cannot_be_joined_is_one_error(address, needle):
    address = address or f"127.0.0.1:{_closed_port()}"
    with pytest.raises(RayClusterError, match=needle):
        _check_reachable(address)


def test_the_study_command_says_so_in_one_line_and_exits_2(tmp_path):
    address = f"127.0.0.1:{_closed_port()}"
    result = CliRunner().invoke(cli.app, ["study", "dynamics", "--preset", "tiny", "--address", address, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: --address {address}: no Ray head node answers there (Connection refused); "
                     f"start one with `ray start --head --port {address.rsplit(':', 1)[1]}`"]


def test_a_cluster_that_takes_clients_without_a_token_is_named_in_a_warning(monkeypatch, capsys):
    with socket.socket() as head:
        head.bind(("127.0.0.1", 0))
        head.listen()
        monkeypatch.setattr(raylet, "GcsClient", lambda address: None)  # its GCS answers without asking for a token
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
        _check_reachable(f"127.0.0.1:{head.getsockname()[1]}")
    assert "accepts clients without a token" in capsys.readouterr().err


def test_ray_address_in_the_environment_is_the_default_address(tmp_path, monkeypatch):
    address = f"127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    result = CliRunner().invoke(cli.app, ["study", "dynamics", "--preset", "tiny", "--out", str(tmp_path)])
    assert result.exit_code == 2 and f"error: RAY_ADDRESS {address}: no Ray head node answers there" in result.output, result.output
