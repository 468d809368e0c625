"""JSON logs, one object per line. Secrets never reach a record: URLs are scrubbed of userinfo
and no header values are logged."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

_USERINFO = re.compile(r"(//)[^/@\s]+@")
_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def scrub(text: str) -> str:
    # Userinfo needs an "@": the substring test costs ~1/30 of the regex, and most values have none.
    return _USERINFO.sub(r"\1***@", text) if "@" in text else text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for k, v in vars(record).items():
            if k not in _STD and not k.startswith("_"):
                out[k] = scrub(v) if isinstance(v, str) else v
        if record.exc_info:
            out["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class AccessLog:
    """Request lines, the hottest log: each is one prebuilt JSON line (the ``JsonFormatter`` shape,
    logger ``shim.access``) kept in a buffer that a task writes out every ``interval_s``, instead of
    a ``logging`` record per request (SPEC §5 keeps one line per request; logging stays for the rest).

    Enabled when ``shim.access`` logs at INFO. Nothing a line holds comes from a header but the
    request id, which is bounded and printable (``web_app.request_id``)."""

    MAX_BUFFERED = 2048  # written at once beyond this, so a burst never grows memory

    def __init__(self, write: Callable[[str], object] | None = None, interval_s: float = 0.05) -> None:
        self.write = write or _stderr_write
        self.interval_s = interval_s
        self._lines: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self._second = -1
        self._stamp = ""
        self._logger = logging.getLogger("shim.access")  # (getLogger takes logging's module lock)

    def enabled(self, debug: bool = False) -> bool:
        return self._logger.isEnabledFor(logging.DEBUG if debug else logging.INFO)

    def request(self, request_id: str, method: str, route: str, status: int, ms: float,
                user_id: str | None, level: str = "info") -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # the date part changes once a second
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        line: dict[str, Any] = {
            "ts": f"{self._stamp}.{int(now * 1000) % 1000:03d}Z", "level": level, "logger": "shim.access",
            "msg": "request", "request_id": request_id, "method": method, "route": route, "status": status,
            "ms": ms,
        }
        if user_id is not None:
            line["user_id"] = user_id
        self._lines.append(orjson.dumps(line))
        if len(self._lines) >= self.MAX_BUFFERED:
            self.flush()

    def line(self, logger: str, msg: str, fields: dict[str, Any], level: str = "info") -> None:
        """Any other frequent line (a delivery attempt), buffered the same way. ``fields`` must
        hold no secrets; string values are scrubbed of URL userinfo all the same."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        line: dict[str, Any] = {
            "ts": f"{self._stamp}.{int(now * 1000) % 1000:03d}Z", "level": level, "logger": logger, "msg": msg,
        }
        for k, v in fields.items():
            line[k] = scrub(v) if isinstance(v, str) else v
        self._lines.append(orjson.dumps(line))
        if len(self._lines) >= self.MAX_BUFFERED:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
            self.write(b"\n".join(lines).decode() + "\n")

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="shim-access-log")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.flush()


def _stderr_write(text: str) -> None:
    # The stream the root handler writes to (``setup_logging``), so access and other lines interleave
    # whole, each line written by one call.
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.acquire()
            try:
                handler.stream.write(text)
                handler.stream.flush()
            finally:
                handler.release()
            return
    sys.stderr.write(text)
