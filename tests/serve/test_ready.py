"""The ready line: what serve prints is what the launcher reads, in every endpoint combination."""

from __future__ import annotations

import pytest
from bnmodel.serve.ready import Endpoints, ServerInfo, parse_ready_line, ready_line

INFO = ServerInfo("127.0.0.1", 8001, ("clf", "reg"), ("CPUExecutionProvider",), 0.25, 8000)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, Endpoints("127.0.0.1:8001", "127.0.0.1:8001", "http://127.0.0.1:8000")),
        ({"http_port": 0}, Endpoints("127.0.0.1:8001", "127.0.0.1:8001", "")),
        ({"port": 0}, Endpoints("127.0.0.1:8000", "", "http://127.0.0.1:8000")),
        (
            {"http_tls": True},
            Endpoints("127.0.0.1:8001", "127.0.0.1:8001", "https://127.0.0.1:8000"),
        ),
    ],
)
def test_the_line_built_is_the_line_read(changes, expected):
    line = ready_line(ServerInfo(**{**INFO.__dict__, **changes}))
    assert parse_ready_line(line + "\n") == expected


def test_workers_failures_and_the_wire_form():
    info = ServerInfo(**{**INFO.__dict__, "failed": ("bad",), "workers": 2})
    assert ServerInfo.from_json(info.to_json()) == info
    line = ready_line(info)
    assert line == (
        "bnmodel serve: ready on 127.0.0.1:8001 (gRPC), 127.0.0.1:8000 (HTTP) (models: clf, "
        "reg; NOT loaded: bad (see the log); CPU; started in 250 ms; 2 workers)"
    )
    assert parse_ready_line("2026-01-01 INFO listening on 127.0.0.1:8001") is None
