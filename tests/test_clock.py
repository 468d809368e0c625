"""Random ids come from OS randomness drawn in blocks; they never repeat across a refill."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from shim.clock import RandomBytes, new_request_id, new_token


def test_random_bytes_span_refills_without_reuse() -> None:
    source = RandomBytes(block=64)
    chunks = [source.take(12) for _ in range(100)]  # 1200 bytes: many refills, some straddling one
    assert all(len(c) == 12 for c in chunks)
    assert len(set(chunks)) == len(chunks)
    assert len(source.take(100)) == 100  # larger than the block


def test_ids_have_their_shapes_and_differ() -> None:
    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000 and all(re.fullmatch(r"[0-9a-f]{24}", i) for i in ids)
    tokens = {new_token(16) for _ in range(2000)}
    assert len(tokens) == 2000 and all(re.fullmatch(r"[A-Za-z0-9_-]{22}", t) for t in tokens)


def test_a_forked_child_draws_its_own_bytes() -> None:
    # In a fresh interpreter: a fork in pytest's (threaded) process is not one to make.
    code = """
import os
from shim.clock import RandomBytes
source = RandomBytes()
source.take(12)  # the block is drawn: the next bytes are in memory, copied into a child
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(write, source.take(12))
    os._exit(0)
os.close(write)
child = os.read(read, 64)
os.waitpid(pid, 0)
print(len(child), child != source.take(12))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.split() == ["12", "True"], out
