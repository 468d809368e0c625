"""Config loading, env expansion, one-line errors, and the CLI's check-config."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from shim.config import ConfigError, demo_config, load_config, mask_userinfo, masked, parse_config

from .conftest import OTHER_USER, USER, free_port

ROOT = Path(__file__).resolve().parents[1]
WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef0123").decode()
EXAMPLE_ENV = {"SHIM_API_SECRET": "api-secret-123", "SHIM_V2_PASSWORD": "p", "SHIM_CALLBACK_PASSWORD": "callback-pass-1",
               "SHIM_SIGNING_SECRET": WHSEC, "SHIM_ADMIN_PASSWORD": "admin-pass-123"}


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
        ({"store": {"sqlite_writer": "both"}}, "store.sqlite_writer"),
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
    assert any(says in p for p in exc.value.problems) and all("\n" not in p for p in exc.value.problems)


def test_example_config_is_valid() -> None:
    cfg = load_config(ROOT / "config.example.yaml", env=EXAMPLE_ENV)
    assert cfg.users and cfg.callbacks.path == "/callbacks/v2"
    assert cfg.upstream.mode == "bandwidth" and cfg.admin.enabled
    assert cfg.store.sqlite_writer == "loop"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shim", *args], capture_output=True, text=True, timeout=60)


def test_check_config_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("callbacks: {username: bw, password: cb-password-long}\n"
                    "users:\n  - user_id: u1\n    api_token: t\n    api_secret: topsecret-long\n"
                    "    account_id: '1'\n    application_id: a\n    v2_username: v\n    v2_password: pw2\n")
    res = run_cli("check-config", str(good))
    assert res.returncode == 0, res.stderr
    assert "u1" in res.stdout and "topsecret" not in res.stdout and "pw2" not in res.stdout
    assert "cb-password-long" not in res.stdout and "mode: bandwidth" in res.stdout
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
    await store.enqueue([DeliverySpec(event_id="evt_dead_1", order_key="k", url="http://hook:hook-pass-9@127.0.0.1:9/x", body={})])
    (d,) = await store.claim("w", 10, 5_000_000)
    await store.mark_failed(d.id, "w", "HTTP 500", None)
    await store.close()
    cfg = tmp_path / "shim.yaml"
    cfg.write_text(f"upstream: {{mode: sandbox}}\nstore:\n  url: sqlite:///{db}\n")
    res = run_cli("dead-letters", "list", "--config", str(cfg))
    assert res.returncode == 0, res.stderr
    assert '"event_id": "evt_dead_1"' in res.stdout and "HTTP 500" in res.stdout
    assert "hook-pass-9" not in res.stdout and "hook:***@127.0.0.1" in res.stdout
    res = run_cli("dead-letters", "replay", "--config", str(cfg))
    assert res.returncode == 2 and "--all" in res.stderr
    res = run_cli("dead-letters", "replay", "--all", "--config", str(cfg))
    assert res.returncode == 0 and '"replayed": 1' in res.stdout
    res = run_cli("dead-letters", "list", "--config", str(cfg))
    assert res.stdout.strip() == "[]"
    # A store.url that names nothing: refused, and nothing is created there.
    missing = tmp_path / "typo.db"
    cfg.write_text(f"upstream: {{mode: sandbox}}\nstore:\n  url: sqlite:///{missing}\n")
    res = run_cli("dead-letters", "list", "--config", str(cfg))
    assert res.returncode == 2 and "never creates one" in res.stderr and not missing.exists()


BANDWIDTH_USER = USER | {"api_secret": "long-enough-secret"}
CB = {"username": "bw", "password": "callback-pass-1"}


def problems(raw: object, env: dict[str, str] | None = None, **kw: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, env={} if env is None else env, **kw)
    return exc.value.problems


def test_env_unset_or_empty_is_an_error_unless_defaulted() -> None:
    raw = {"users": [USER | {"api_secret": "${SECRET}"}]}
    assert problems(raw, {"SECRET": ""}) == ["users.0.api_secret: environment variable SECRET is not set or empty"]
    assert problems(raw) == ["users.0.api_secret: environment variable SECRET is not set or empty"]
    raw = {"users": [USER | {"api_secret": "${SECRET:-fallback-value}"}]}
    assert parse_config(raw, env={"SECRET": ""}).users[0].api_secret.get_secret_value() == "fallback-value"
    assert parse_config(raw, env={"SECRET": "set"}).users[0].api_secret.get_secret_value() == "set"


def test_all_problems_reported_each_naming_the_key() -> None:
    raw = {
        "server": {"public_url": "shim.example.com"},
        "upstream": {"base_url": "messaging.bandwidth.com/api/v2"},
        "store": {"url": "mysql://db/shim"},
        "callbacks": {"deny_cidrs": ["banana"], "path": "/v1/users", "signing_secret": "not-whsec"},
        "retention": {"text_days": 40, "purge_days": 30},
        "users": [USER | {"incoming": {"url": "ftp://legacy/in"}, "native_events": {"url": "nope"}}],
    }
    found = problems(raw)
    for key in ("server.public_url", "upstream.base_url", "store.url", "callbacks.deny_cidrs", "callbacks.path",
                "callbacks.signing_secret", "retention", "users.0.incoming.url", "users.0.native_events.url"):
        assert any(p.startswith(key) for p in found), (key, found)
    assert all("\n" not in p for p in found) and len(found) == 9
    assert any("text_days" in p for p in found)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/admin", "/admin/x", "/v1/users/u/messages"])
def test_callback_path_cannot_shadow_a_route(path: str) -> None:
    assert problems({"callbacks": {"path": path}})[0].startswith("callbacks.path")


def test_cross_field_rules() -> None:
    dup_app = [USER, OTHER_USER | {"application_id": USER["application_id"]}]
    assert problems({"users": dup_app}) == [f"users.1.application_id: duplicate application_id {USER['application_id']!r}"]
    assert any("admin.username" in p for p in problems({"callbacks": {"admin_username": "a", "admin_password": "b"}}))
    # Outside sandbox mode: callback credentials required, checked secrets at least 12 characters.
    found = problems({"upstream": {"mode": "bandwidth"}, "users": [USER | {"api_secret": "short"}],
                      "admin": {"username": "a", "password": "short"}})
    assert any(p.startswith("callbacks.username") for p in found)
    assert any(p.startswith("users.0.api_secret") and "12" in p for p in found)
    assert any(p.startswith("admin.password") for p in found)
    cfg = parse_config({"upstream": {"mode": "bandwidth"}, "callbacks": CB, "users": [BANDWIDTH_USER]})
    assert cfg.upstream.mode == "bandwidth"
    assert problems({"callbacks": CB, "users": [USER | {"api_secret": "short"}]}, default_mode="bandwidth")


def test_signing_secrets_are_standard_webhooks_secrets() -> None:
    cfg = parse_config({"callbacks": {"signing_secret": WHSEC, "signing_secrets": [WHSEC]}})
    assert cfg.callbacks.secrets() == [WHSEC, WHSEC]
    assert problems({"callbacks": {"signing_secrets": ["whsec_!!!"]}})[0].startswith("callbacks.signing_secrets")


def test_file_defaults_to_bandwidth_and_refuses_duplicate_keys(tmp_path: Path) -> None:
    path = tmp_path / "shim.yaml"
    path.write_text("callbacks: {username: bw, password: callback-pass-1}\n")
    assert load_config(path).upstream.mode == "bandwidth"
    path.write_text("server:\n  port: 8080\n  port: 9090\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert "duplicate key 'port'" in str(exc.value)
    assert demo_config().upstream.mode == "sandbox"


def test_cli_reports_every_problem_one_line_each(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("store: {url: 'mysql://db/shim'}\ncallbacks: {deny_cidrs: [banana]}\n")
    res = run_cli("check-config", str(bad))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and any("store.url" in x for x in lines) and any("callbacks.deny_cidrs" in x for x in lines)


def serve_until_started(config: Path | None, tmp_path: Path, **env: str) -> tuple[int, str, str]:
    """Run ``shim serve`` until its start line (or exit); returns (exit code or 0, stdout, stderr)."""
    args = [sys.executable, "-m", "shim", "serve"] + (["--config", str(config)] if config else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**__import__("os").environ, "SHIM_CONFIG": "", **env})
    assert proc.stderr is not None
    err = ""
    started = False
    for line in proc.stderr:
        err += line
        if "shim started" in line:
            started = True
            break
    if started:
        proc.terminate()
        out, rest = proc.communicate(timeout=30)
        return 0, out, err + rest  # started
    out, rest = proc.communicate(timeout=30)
    return proc.returncode, out, err + rest


def sandbox_file(tmp_path: Path, port: int, **extra: str) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(f"server: {{port: {port}}}\nupstream: {{mode: sandbox}}\n"
                    f"store: {{url: '{extra.get('store', f'sqlite:///{tmp_path}/s.db')}'}}\n"
                    "callbacks: {username: bw, password: callback-pass-1}\n"
                    "users:\n  - user_id: u1\n    api_token: tok\n    api_secret: api-secret-xyz\n"
                    "    account_id: '1'\n    application_id: a\n    v2_username: v\n    v2_password: v2-pass-xyz\n")
    return path


def test_startup_with_a_file_is_one_json_line_without_secrets(tmp_path: Path) -> None:
    import json

    port = free_port()
    code, out, err = serve_until_started(sandbox_file(tmp_path, port), tmp_path)
    assert code == 0, err
    assert out == ""  # no banner, no curl line
    (start,) = [json.loads(x) for x in err.splitlines() if "shim started" in x]
    assert start["upstream_mode"] == "sandbox" and "SANDBOX" in start["msg"] and start["users"] == 1
    assert start["version"] and start["bind"] == f"127.0.0.1:{port}" and start["store"].startswith("sqlite:")
    for secret in ("api-secret-xyz", "v2-pass-xyz", "callback-pass-1"):
        assert secret not in out + err


def test_demo_banner_shows_credentials(tmp_path: Path) -> None:
    code, out, err = serve_until_started(None, tmp_path)  # the embedded demo, on 127.0.0.1:8080
    if code == 2 and "cannot start" in err:
        pytest.skip("port 8080 is taken on this machine")
    assert code == 0, err
    assert "api_secret=demo-secret" in out and "curl" in out and "SANDBOX" in out


def test_start_failures_are_one_line_exit_2(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, _, err = serve_until_started(sandbox_file(tmp_path, busy.getsockname()[1]), tmp_path)
    assert code == 2 and "cannot start" in err and "Traceback" not in err
    assert len([x for x in err.splitlines() if x.startswith("shim:")]) == 1
    (tmp_path / "a-file").write_text("")
    code, _, err = serve_until_started(
        sandbox_file(tmp_path, free_port(), store=f"sqlite:///{tmp_path}/a-file/s.db"), tmp_path)
    assert code == 2 and "cannot start" in err and "Traceback" not in err


def test_lease_outlasts_primary_and_fallback_attempts() -> None:
    # A lease must cover the longest attempt (primary + fallback at the 10 s callbackTimeout
    # maximum) plus a margin, even though the engine renews it while held.
    (problem,) = problems({"callbacks": {"lease_s": 20}, "users": [USER]})
    assert problem.startswith("callbacks.lease_s") and "25" in problem
    assert parse_config({"callbacks": {"lease_s": 25}, "users": [USER]}).callbacks.lease_s == 25
    assert parse_config({"users": [USER]}).callbacks.lease_s == 60


def test_env_overrides_apply_over_the_file_and_the_demo(tmp_path: Path) -> None:
    env = {"SHIM_HOST": "0.0.0.0", "SHIM_PORT": "9099", "SHIM_STORE_URL": f"sqlite:///{tmp_path}/o.db",
           "SHIM_PUBLIC_URL": "https://shim.example.com/"}
    cfg = load_config(sandbox_file(tmp_path, 8080), env=env)
    assert (cfg.server.host, cfg.server.port) == ("0.0.0.0", 9099)
    assert cfg.store.url == f"sqlite:///{tmp_path}/o.db" and cfg.server.public_url == "https://shim.example.com"
    # Empty counts as unset; a wildcard bind without SHIM_PUBLIC_URL hands out loopback URLs.
    cfg = parse_config({}, env={"SHIM_HOST": "0.0.0.0", "SHIM_PORT": "", "SHIM_PUBLIC_URL": ""})
    assert cfg.server.port == 8080 and cfg.server.public_url == "http://127.0.0.1:8080"
    assert parse_config({"server": {"host": "::"}}, env={}).server.public_url == "http://[::1]:8080"


@pytest.mark.parametrize(("var", "value", "key"), [
    ("SHIM_PORT", "eighty", "server.port"), ("SHIM_PORT", "70000", "server.port"),
    ("SHIM_STORE_URL", "mysql://db/shim", "store.url"), ("SHIM_PUBLIC_URL", "shim.example.com", "server.public_url"),
])
def test_a_bad_override_names_the_key_and_the_variable(var: str, value: str, key: str) -> None:
    (problem,) = problems({}, {var: value})
    assert problem.startswith(f"{key}:") and f"environment variable {var}" in problem and "\n" not in problem


def test_overrides_reach_the_cli(tmp_path: Path) -> None:
    import os

    good = sandbox_file(tmp_path, 8080)
    env = {**os.environ, "SHIM_PORT": "9321", "SHIM_STORE_URL": "postgresql://shim:db-pass-99@db:5432/shim"}
    res = subprocess.run([sys.executable, "-m", "shim", "check-config", str(good)], capture_output=True, text=True,
                         timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    assert "port: 9321" in res.stdout and "postgresql://shim:***@db" in res.stdout and "db-pass-99" not in res.stdout
    res = subprocess.run([sys.executable, "-m", "shim", "check-config", str(good)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "SHIM_PORT": "x"})
    assert res.returncode == 2 and "server.port" in res.stderr and "SHIM_PORT" in res.stderr


def test_healthcheck_follows_the_configured_port(tmp_path: Path) -> None:
    import os

    port = free_port()
    path = sandbox_file(tmp_path, 8080)
    env = {**os.environ, "SHIM_CONFIG": str(path), "SHIM_PORT": str(port), "SHIM_HOST": "0.0.0.0"}
    proc = subprocess.Popen([sys.executable, "-m", "shim", "serve"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "shim started" in line:
                break
        check = subprocess.run([sys.executable, "-m", "shim", "healthcheck"], env=env, capture_output=True, text=True,
                               timeout=30)
        assert check.returncode == 0, check.stderr
        check = subprocess.run([sys.executable, "-m", "shim", "healthcheck"], capture_output=True, text=True, timeout=30,
                               env={**env, "SHIM_PORT": str(free_port())})
        assert check.returncode == 1 and "healthcheck http://127.0.0.1:" in check.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_the_demo_beyond_loopback_gets_random_credentials() -> None:
    from shim.cli import banner, harden_demo

    cfg = demo_config()
    assert not harden_demo(cfg) and cfg.users[0].api_secret.get_secret_value() == "demo-secret"
    cfg.server.host = "0.0.0.0"
    assert harden_demo(cfg)
    secret = cfg.users[0].api_secret.get_secret_value()
    assert secret != "demo-secret" and len(secret) >= 20
    assert cfg.callbacks.password is not None and cfg.callbacks.password.get_secret_value() != "callback-secret"
    text = banner(cfg, None, hardened=True)
    assert f"api_secret={secret}" in text and "demo-secret" not in text and "random" in text
    other = demo_config()
    other.server.host = "::"
    harden_demo(other)
    assert other.users[0].api_secret.get_secret_value() != secret


@pytest.mark.parametrize(("url", "shown"), [
    ("https://u:p@h.example/x", "https://u:***@h.example/x"),
    ("https://tok@h.example/x", "https://***@h.example/x"),  # userinfo without a password: a token
    ("https://h.example/x", "https://h.example/x"),
    ("postgresql://shim:pw@db:5432/shim", "postgresql://shim:***@db:5432/shim"),
    ("a https://a:b@h and https://t@k/", "a https://a:***@h and https://***@k/"),
    ("https://h.example/p@q", "https://h.example/p@q"),  # an @ in the path is no userinfo
])
def test_mask_userinfo(url: str, shown: str) -> None:
    assert mask_userinfo(url) == shown
