"""PostgreSQL for tests: a fresh database per test on the server named by
``SHIM_TEST_POSTGRES_URL`` (``.ci/run`` starts one). In CI a missing server is a failure."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

ENV = "SHIM_TEST_POSTGRES_URL"


def server_url() -> str:
    url = os.environ.get(ENV)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{ENV} is not set in CI: .ci/run must start PostgreSQL")
        pytest.skip(f"{ENV} not set (local run without PostgreSQL; CI always sets it)")
    return url


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    base = server_url()
    name = f"shim_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(base)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    prefix, _, _ = base.rpartition("/")
    try:
        yield f"{prefix}/{name}"
    finally:
        admin = await asyncpg.connect(base)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
