"""Run ``shim serve`` as a real child process (for crash, restart and replica tests)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml


async def send_with_receipts(base_url: str, n: int, prefix: str, callback_url: str, auth_headers: dict[str, str]) -> list[str]:
    """Send n v1 messages with receiptRequested=all; returns their ids (asserting 201s)."""
    ids: list[str] = []
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            body = {"from": "+15551230001", "to": f"{prefix}{i:04d}", "text": f"m{i}",
                    "receiptRequested": "all", "callbackUrl": callback_url}
            async with s.post(f"{base_url}/v1/users/u-test/messages", data=json.dumps(body), headers=auth_headers) as r:
                assert r.status == 201, await r.text()
                assert r.headers["Location"].startswith(base_url)
                ids.append(r.headers["Location"].rsplit("/", 1)[1])
    return ids


class ShimProcess:
    def __init__(self, config: dict[str, Any], workdir: Path, name: str = "shim") -> None:
        self.config = config
        self.path = workdir / f"{name}.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        port = config["server"]["port"]
        self.url = f"http://127.0.0.1:{port}"

    async def start(self) -> None:
        env = dict(os.environ, SHIM_LOG_LEVEL="INFO")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shim", "serve", "--config", str(self.path)],
                stdout=log, stderr=log, env=env,
            )
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"shim exited: {self.log.read_text()[-2000:]}")
                try:
                    async with s.get(f"{self.url}/healthz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError("shim did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 20) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
