"""SIGHUP reloads the config file of a running ``shim serve``: users are added (and their modes
changed) while traffic flows; a bad file keeps the running config and says why."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from shim.sandbox import CallbackTarget, build_sandbox_app

from .conftest import CB_PASS, CB_USER, OTHER_USER, USER, auth, free_port, wait_until
from .process import ShimProcess

BODY = {"from": "+15551230001", "to": "+15551230002", "text": "reload"}


@pytest.fixture
async def shim(tmp_path: Path) -> AsyncIterator[tuple[ShimProcess, dict[str, Any]]]:
    port = free_port()
    creds = {(u["v2_username"], u["v2_password"]) for u in (USER, OTHER_USER)}
    sandbox = build_sandbox_app(creds, CallbackTarget(f"http://127.0.0.1:{port}/callbacks/v2", CB_USER, CB_PASS),
                                delay_s=0.01)
    server = TestServer(sandbox, host="127.0.0.1")
    await server.start_server()
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port},
        "store": {"url": f"sqlite:///{tmp_path}/reload.db"},
        "upstream": {"mode": "bandwidth", "base_url": str(server.make_url("")).rstrip("/")},
        "callbacks": {"username": CB_USER, "password": CB_PASS, "allow_cidrs": ["127.0.0.0/8"]},
        "users": [USER],
    }
    proc = ShimProcess(config, tmp_path, "reload")
    await proc.start()
    try:
        yield proc, config
    finally:
        proc.stop()
        await server.close()


async def send(s: aiohttp.ClientSession, url: str, user: dict[str, Any]) -> tuple[int, str]:
    async with s.post(f"{url}/v1/users/{user['user_id']}/messages", data=json.dumps(BODY),
                      headers=auth(user["api_token"], user["api_secret"])) as r:
        await r.read()
        return r.status, r.headers.get("Location", "")


def log_lines(proc: ShimProcess, msg: str) -> list[dict[str, Any]]:
    out = []
    for line in proc.log.read_text().splitlines():
        if line.startswith("{") and f'"{msg}"' in line:
            out.append(json.loads(line))
    return out


async def test_sighup_adds_a_user_while_traffic_flows_and_a_bad_file_changes_nothing(
    shim: tuple[ShimProcess, dict[str, Any]],
) -> None:
    proc, config = shim
    assert proc.proc is not None
    statuses: list[int] = []
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as s:
        assert (await send(s, proc.url, OTHER_USER))[0] == 401  # not configured yet

        async def traffic() -> None:
            while not stop.is_set():
                statuses.append((await send(s, proc.url, USER))[0])

        flowing = asyncio.create_task(traffic())
        await wait_until(lambda: len(statuses) >= 5)
        # The new user, and a change that needs a restart (not applied, said so).
        config["users"] = [USER, OTHER_USER | {"mode": "dry-run"}]
        config["callbacks"] = config["callbacks"] | {"retry_schedule_s": [1, 2]}
        proc.path.write_text(yaml.safe_dump(config))
        proc.proc.send_signal(1)  # SIGHUP

        async def other_accepted() -> bool:
            return (await send(s, proc.url, OTHER_USER))[0] == 201

        await wait_until(other_accepted, timeout=10)
        during = len(statuses)
        await wait_until(lambda: len(statuses) >= during + 5)
        stop.set()
        await flowing
        assert statuses and set(statuses) == {201}  # the old user's sends never failed meanwhile
        (reloaded,) = log_lines(proc, "config reloaded")
        assert reloaded["users"] == 2 and reloaded["not_applied_until_restart"] == ["callbacks"]
        # Its mode came with it: a dry-run message, marked as such.
        status, location = await send(s, proc.url, OTHER_USER)
        assert status == 201
        async with s.get(location, headers=auth(OTHER_USER["api_token"], OTHER_USER["api_secret"])) as r:
            assert (await r.json())["shimDryRun"] is True

        # A broken file: refused with the reason, the running config (both users) stays.
        proc.path.write_text("users: [{user_id: only-a-name}]\n")
        proc.proc.send_signal(1)
        await wait_until(lambda: bool(log_lines(proc, "config reload refused; the running config stays")))
        (refused,) = log_lines(proc, "config reload refused; the running config stays")
        assert any("users" in p for p in refused["problems"])
        assert (await send(s, proc.url, OTHER_USER))[0] == 201
        assert (await send(s, proc.url, USER))[0] == 201
