"""Pure helpers of the queue's gRPC edge: trace ids, page tokens, CLI settings."""

from __future__ import annotations

import pytest

from agentgate.common.config import ConfigError
from agentgate.common.errors import InvalidArgument
from agentgate.queue.__main__ import build_app, build_parser
from agentgate.queue.server import decode_page_token, encode_page_token, trace_id_from_traceparent


@pytest.mark.parametrize(
    ("traceparent", "trace_id"),
    [
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", ""),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ""),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", ""),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", ""),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", ""),
        ("", ""),
        ("garbage", ""),
    ],
)
def test_trace_id_from_traceparent(traceparent: str, trace_id: str) -> None:
    assert trace_id_from_traceparent(traceparent) == trace_id


def test_page_tokens_round_trip_and_refuse_foreign_ones() -> None:
    assert decode_page_token(encode_page_token(1234)) == 1234
    for bad in ["", "!!!", "d286OjA", encode_page_token(1).upper(), "eHg6MTI"]:
        with pytest.raises(InvalidArgument) as err:
            decode_page_token(bad)
        assert err.value.violations[0].field == "page_token"


def test_cli_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch, home) -> None:
    monkeypatch.setenv("AGENTGATE_MAX_CONCURRENT", "7")
    monkeypatch.setenv("AGENTGATE_MAX_QUEUE_SIZE", "9")
    monkeypatch.setenv("AGENTGATE_PERSISTENCE_ADDR", "127.0.0.1:6000")
    app = build_app(build_parser().parse_args(["--max-concurrent", "3", "--address", "127.0.0.1:7000"]))
    assert (app.max_concurrent, app.max_queue_size) == (3, 9)
    assert app.persistence_address == "127.0.0.1:6000"
    assert app.settings.address == "127.0.0.1:7000"
    assert app.settings.database_path == home / "queue.db"


@pytest.mark.parametrize(
    ("argv", "env", "key"),
    [
        (["--max-concurrent", "0"], {}, "--max-concurrent"),
        (["--max-queue-size", "-4"], {}, "--max-queue-size"),
        ([], {"AGENTGATE_MAX_CONCURRENT": "lots"}, "AGENTGATE_MAX_CONCURRENT"),
        ([], {"AGENTGATE_MAX_QUEUE_SIZE": "0"}, "AGENTGATE_MAX_QUEUE_SIZE"),
        ([], {"AGENTGATE_PERSISTENCE_ADDR": "nowhere"}, "AGENTGATE_PERSISTENCE_ADDR"),
        ([], {"AGENTGATE_QUEUE_ADDR": "host:port"}, "AGENTGATE_QUEUE_ADDR"),
    ],
)
def test_bad_settings_name_the_key(monkeypatch: pytest.MonkeyPatch, home, argv, env, key) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=key):
        build_app(build_parser().parse_args(argv))
