"""Several replicas per service: the address list a client takes, the database URL a
service takes (docs/deployment.md, "Several replicas on PostgreSQL")."""

from __future__ import annotations

import json

import pytest

from agentgate.common.channels import REPLICA_SERVICE_CONFIG, channel_target
from agentgate.common.config import ConfigError, service_address
from agentgate.common.database import DATABASE_URL_ENV, database_url, qmark


def test_one_address_is_kept_as_is_without_replica_options() -> None:
    assert channel_target("127.0.0.1:50051") == ("127.0.0.1:50051", [])


def test_several_addresses_become_one_target_with_round_robin_and_retries() -> None:
    target, options = channel_target("127.0.0.1:1, localhost:2")
    assert target == "ipv4:127.0.0.1:1,127.0.0.1:2"
    config = json.loads(dict(options)["grpc.service_config"])  # type: ignore[arg-type]
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert channel_target("[::1]:1,[::1]:2")[0] == "ipv6:[::1]:1,[::1]:2"
    assert channel_target("dns:///queue:50051") == ("dns:///queue:50051", [("grpc.service_config", REPLICA_SERVICE_CONFIG)])


def test_bad_address_lists_are_refused() -> None:
    with pytest.raises(ConfigError, match="not host:port"):
        channel_target("127.0.0.1:1,nonsense")
    with pytest.raises(ConfigError, match="mixes"):
        channel_target("127.0.0.1:1,[::1]:2")
    with pytest.raises(ConfigError, match="comma-separated"):
        service_address("queue", "127.0.0.1:1,127.0.0.1")
    assert service_address("queue", "127.0.0.1:1,127.0.0.1:2") == "127.0.0.1:1,127.0.0.1:2"


def test_database_url_from_flag_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    assert database_url(None) == ""
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql://db/agentgate")
    assert database_url(None) == "postgresql://db/agentgate"
    assert database_url("") == ""  # an explicit empty flag means SQLite
    with pytest.raises(ConfigError, match="postgresql://"):
        database_url("mysql://db")


def test_placeholders_in_psycopg_spelling() -> None:
    assert qmark("SELECT ? WHERE a LIKE '5%'") == "SELECT %s WHERE a LIKE '5%%'"
