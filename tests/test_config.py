"""Config loading, env expansion, one-line errors, and the CLI's check-config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shim.config import ConfigError, demo_config, load_config, masked, parse_config

from .conftest import USER

ROOT = Path(__file__).resolve().parents[1]


def test_defaults() -> None:
    cfg = parse_config({})
    assert cfg.server.public_url == "http://127.0.0.1:8080"
    assert cfg.upstream.mode == "sandbox" and cfg.store.url == "sqlite:///./shim.db"
    assert cfg.callbacks.retry_schedule_s[0] == 5 and sum(cfg.callbacks.retry_schedule_s) >= 86_400
    assert demo_config().users[0].user_id == "u-demo"


def test_env_expansion_and_masking() -> None:
    raw = {"users": [USER | {"api_secret": "${SECRET}", "v2_password": "x-${PW}-y"}],
           "store": {"url": "postgresql://shim:${DBPW}@db:5432/shim"}}
    cfg = parse_config(raw, env={"SECRET": "abc", "PW": "pw", "DBPW": "dbpass"})
    assert cfg.users[0].api_secret.get_secret_value() == "abc"
    assert cfg.users[0].v2_password.get_secret_value() == "x-pw-y"
    out = masked(cfg)
    text = repr(out)
    assert "abc" not in text and "x-pw-y" not in text and "dbpass" not in text
    assert out["store"]["url"] == "postgresql://shim:***@db:5432/shim"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"server": {"port": "eighty"}}, "server.port"),
        ({"servr": {}}, "servr"),
        ({"upstream": {"mode": "prod"}}, "upstream.mode"),
        ({"users": [{"user_id": "u"}]}, "users.0.api_token"),
        ({"users": [USER, USER]}, "duplicate user_id"),
        ({"callbacks": {"retry_schedule_s": []}}, "retry_schedule_s"),
        ({"users": [USER | {"api_secret": "${NOPE}"}]}, "NOPE"),
        ([1, 2], "mapping"),
    ],
)
def test_errors_are_one_line_and_name_the_key(raw: object, says: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, env={})
    assert says in str(exc.value) and "\n" not in str(exc.value)


def test_example_config_is_valid() -> None:
    cfg = load_config(ROOT / "config.example.yaml", env={
        "SHIM_API_SECRET": "s", "SHIM_V2_PASSWORD": "p", "SHIM_CALLBACK_PASSWORD": "c",
        "SHIM_SIGNING_SECRET": "k", "SHIM_ADMIN_PASSWORD": "a"})
    assert cfg.users and cfg.callbacks.path == "/callbacks/v2"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shim", *args], capture_output=True, text=True, timeout=60)


def test_check_config_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("users:\n  - user_id: u1\n    api_token: t\n    api_secret: topsecret\n"
                    "    account_id: '1'\n    application_id: a\n    v2_username: v\n    v2_password: pw2\n")
    res = run_cli("check-config", str(good))
    assert res.returncode == 0, res.stderr
    assert "u1" in res.stdout and "topsecret" not in res.stdout and "pw2" not in res.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: -1\n")
    res = run_cli("check-config", str(bad))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "server.port" in res.stderr
    res = run_cli("check-config", str(tmp_path / "missing.yaml"))
    assert res.returncode == 2 and "cannot read" in res.stderr
    (tmp_path / "broken.yaml").write_text("a: [")
    res = run_cli("check-config", str(tmp_path / "broken.yaml"))
    assert res.returncode == 2 and "not valid YAML" in res.stderr


async def test_dead_letters_cli(tmp_path: Path) -> None:
    from shim.core import DeliverySpec
    from shim.gateway import Gateway
    from shim.store import open_store

    db = tmp_path / "dl.db"
    store = open_store(f"sqlite:///{db}", Gateway(parse_config({})))
    await store.open()
    await store.enqueue([DeliverySpec(event_id="evt_dead_1", order_key="k", url="http://127.0.0.1:9/x", body={})])
    (d,) = await store.claim("w", 10, 5_000_000)
    await store.mark_failed(d.id, "w", "HTTP 500", None)
    await store.close()
    cfg = tmp_path / "shim.yaml"
    cfg.write_text(f"store:\n  url: sqlite:///{db}\n")
    res = run_cli("dead-letters", "list", "--config", str(cfg))
    assert res.returncode == 0, res.stderr
    assert '"event_id": "evt_dead_1"' in res.stdout and "HTTP 500" in res.stdout
    res = run_cli("dead-letters", "replay", "--config", str(cfg))
    assert res.returncode == 0 and '"replayed": 1' in res.stdout
    res = run_cli("dead-letters", "list", "--config", str(cfg))
    assert res.stdout.strip() == "[]"
