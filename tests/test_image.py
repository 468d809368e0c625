"""The container without a Docker engine: the Dockerfile's own steps, run for real.

The Dockerfile is parsed, not mirrored: its install step (``deploy/install.sh``, hash-checked from
``requirements.lock``) builds a clean virtualenv, then its ENTRYPOINT + CMD start with only its ENV
(and an operator's ``SHIM_PORT``), its WORKDIR/VOLUME mapped to a temporary directory, and its
HEALTHCHECK command must pass. Also: the lock pins every dependency with hashes, and
docker-compose.yml is checked structurally (services, profiles, mounts, every ``${VAR}`` in
``.env.example``)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import Requirement

from shim.config import load_config

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
DIGEST = re.compile(r"^python:3\.11-slim@sha256:[0-9a-f]{64}( AS \w+)?$")


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions((ROOT / "Dockerfile").read_text()):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def one(stage: list[tuple[str, str]], word: str) -> str:
    (args,) = [a for w, a in stage if w == word]
    return args


def image_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in stage:
        if word == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def test_dockerfile_pins_its_base_and_runs_the_install_script() -> None:
    build, final = stages()
    froms = [one(build, "FROM"), one(final, "FROM")]
    assert all(DIGEST.match(f) for f in froms), froms
    assert len({f.split()[0] for f in froms}) == 1  # the same digest for both stages
    assert one(build, "RUN") == "sh deploy/install.sh /opt/shim /src"
    assert one(final, "USER") == "10001" and one(final, "WORKDIR") == "/var/lib/shim"
    assert json.loads(one(final, "VOLUME")) == ["/var/lib/shim"]
    assert "chown 10001:10001 /var/lib/shim" in one(final, "RUN")
    assert json.loads(one(final, "ENTRYPOINT")) == ["shim"] and json.loads(one(final, "CMD")) == ["serve"]
    health = one(final, "HEALTHCHECK")
    assert json.loads(health[health.index("CMD") + 3:]) == ["shim", "healthcheck"]
    env = image_env(final)
    assert env["SHIM_HOST"] == "0.0.0.0" and env["PATH"].startswith("/opt/shim/bin:")
    assert "SHIM_STORE_URL" not in env  # a config file's store.url must win; the default lands in WORKDIR
    # Everything the build copies gets past .dockerignore.
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    for word, args in build:
        if word == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert any(source == a or source.startswith(a + "/") for a in allowed), source
                assert (ROOT / source).exists(), source


def lock_entries() -> dict[str, tuple[str, int]]:
    """name → (version, number of hashes)."""
    text = (ROOT / "requirements.lock").read_text()
    entries: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=[a-z0-9])", text):
        m = re.match(r"([A-Za-z0-9._-]+)==([^ ;\\]+)", block)
        if m:
            entries[m.group(1).lower().replace("_", "-")] = (m.group(2), block.count("--hash=sha256:"))
    return entries


def test_lock_pins_every_dependency_with_hashes() -> None:
    entries = lock_entries()
    assert entries and all(hashes >= 1 for _, hashes in entries.values()), entries
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in [*deps, "setuptools>=68"]:  # setuptools: the build backend, installed from the lock too
        req = Requirement(dep)
        name = req.name.lower().replace("_", "-")
        assert name in entries, f"{name} is not in requirements.lock: run make lock"
        assert req.specifier.contains(entries[name][0]), f"{name}=={entries[name][0]} does not satisfy {dep}"


def wheelhouse() -> Path:
    """The lock's wheels, downloaded once per lock (hash-checked again at install)."""
    lock = ROOT / "requirements.lock"
    where = ROOT / "build" / "image-wheels" / hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    if not where.is_dir():
        partial = where.with_name(where.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--require-hashes", "--only-binary=:all:",
                        "--no-deps", "-r", str(lock), "-d", str(partial)], check=True, timeout=600, capture_output=True)
        partial.rename(where)
    return where


def get(url: str, auth: tuple[str, str] | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_image_install_and_entry_steps(tmp_path: Path) -> None:
    build, final = stages()
    prefix = tmp_path / "opt" / "shim"
    # The install step: the Dockerfile's RUN, from a local copy of the lock's wheels.
    # `python` is this interpreter (3.11, as in the image), whatever else is on PATH.
    install = dict(os.environ, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheelhouse()), PIP_NO_COMPILE="1",
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    run = [{"/opt/shim": str(prefix), "/src": str(ROOT)}.get(word, word) for word in shlex.split(one(build, "RUN"))]
    res = subprocess.run(run, cwd=ROOT, env=install, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    # The entry: only the image's ENV (paths mapped into tmp_path), plus the operator's SHIM_PORT.
    port = free_port()
    env = {k: v.replace("/opt/shim", str(prefix)).replace("$PATH", "/usr/bin:/bin") for k, v in image_env(final).items()}
    env |= {"HOME": str(tmp_path), "SHIM_PORT": str(port)}
    volume = tmp_path / "var" / "lib" / "shim"
    volume.mkdir(parents=True)
    argv = json.loads(one(final, "ENTRYPOINT")) + json.loads(one(final, "CMD"))
    exe = shutil.which(argv[0], path=env["PATH"])
    assert exe == str(prefix / "bin" / "shim")
    with subprocess.Popen([exe, *argv[1:]], cwd=volume, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            run_the_entry(proc, final, prefix, env, port, volume)
        finally:
            if proc.poll() is None:
                proc.kill()


def run_the_entry(proc: subprocess.Popen[str], final: list[tuple[str, str]], prefix: Path, env: dict[str, str],
                  port: int, volume: Path) -> None:
    assert proc.stdout is not None and proc.stderr is not None
    start: dict[str, Any] = {}
    for line in proc.stderr:
        if "shim started" in line:
            start = json.loads(line)
            break
    assert start, "shim did not start"
    assert start["bind"] == f"0.0.0.0:{port}" and start["store"] == "sqlite:///./shim.db"
    assert (volume / "shim.db").exists()  # the store is in the volume
    assert get(f"http://127.0.0.1:{port}/healthz") == 200
    # The demo bound to 0.0.0.0: the published credentials open nothing, the banner's do.
    banner = [proc.stdout.readline() for _ in range(6)]
    (user,) = [x for x in banner if x.startswith("user u-demo:")]
    secret = user.split("api_secret=")[1].strip()
    assert "random" in "".join(banner) and secret != "demo-secret"
    messages = f"http://127.0.0.1:{port}/v1/users/u-demo/messages"
    assert get(messages, ("t-demo-token", "demo-secret")) == 401
    assert get(messages, ("t-demo-token", secret)) == 200
    # The HEALTHCHECK command, with the container's environment.
    health = one(final, "HEALTHCHECK")
    check = json.loads(health[health.index("CMD") + 3:])
    exe = shutil.which(check[0], path=env["PATH"])
    assert exe == str(prefix / "bin" / "shim")
    res = subprocess.run([exe, *check[1:]], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert "shim stopped" in proc.stderr.read()


def env_example() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key) and "#" not in value, line
            out[key] = value
    return out


def test_compose_file_structure() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    services: dict[str, Any] = compose["services"]
    default = {n for n, s in services.items() if not s.get("profiles")}
    sandbox = {n for n, s in services.items() if "sandbox" in s.get("profiles", [])}
    assert default == {"db", "shim-1", "shim-2", "lb"} and sandbox == {"shim-sandbox", "sandbox", "receiver"}
    for name, svc in services.items():
        deps = svc.get("depends_on", [])
        assert set(deps) <= set(services), name
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_file(), (name, source)
            else:
                assert source in compose["volumes"], (name, source)
    for replica in ("shim-1", "shim-2"):
        svc = services[replica]
        assert svc["environment"]["SHIM_CONFIG"] == "/etc/shim/config.yaml" and "command" not in svc
        assert "ports" not in svc  # reached through the load balancer only
        assert services["lb"]["depends_on"][replica] == {"condition": "service_healthy"}
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert re.findall(r"server (shim-\d):8080", nginx) == ["shim-1", "shim-2"]
    assert "non_idempotent" not in nginx  # a POST (a send) is never retried on another replica
    assert services["lb"]["ports"] == ["${SHIM_HTTP_PORT:-8080}:8080"]
    # Every variable used is documented in .env.example, and every documented one is used.
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    assert used == set(env_example()), used ^ set(env_example())


def test_compose_configs_validate_with_the_example_env() -> None:
    env = env_example()
    cfg = load_config(ROOT / "deploy" / "config.compose.yaml", env=env)
    assert cfg.server.public_url == env["SHIM_PUBLIC_URL"] and cfg.store.url.startswith("postgresql://")
    cfg = load_config(ROOT / "deploy" / "config.sandbox.yaml", env=env)
    assert cfg.upstream.base_url == "http://sandbox:9090" and cfg.users[0].incoming is not None
    assert cfg.users[0].incoming.url.startswith("http://receiver:9000/")


def test_receiver_prints_each_callback(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "shim", "receiver", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        assert "shim receiver on" in proc.stdout.readline()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/cb?x=1", data=b'{"a":1}',
                                     headers={"webhook-id": "msg_1", "Content-Type": "application/json"})
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=10) as r:
            assert r.status == 200
        line = json.loads(proc.stdout.readline())
        assert line == {"method": "POST", "path": "/cb", "query": "x=1", "webhook-id": "msg_1", "body": '{"a":1}'}
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_the_sandbox_profile_loop_on_loopback(tmp_path: Path) -> None:
    """The sandbox profile's three services as processes, its compose hostnames mapped to loopback:
    a v1 send goes through the simulator and its v1 callback reaches the receiver."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    env = {**os.environ, **env_example()}
    ports = {"shim-sandbox": free_port(), "sandbox": free_port(), "receiver": free_port()}
    text = (ROOT / "deploy" / "config.sandbox.yaml").read_text()
    text = text.replace("http://sandbox:9090", f"http://127.0.0.1:{ports['sandbox']}")
    text = text.replace("http://receiver:9000", f"http://127.0.0.1:{ports['receiver']}")
    text = text.replace('allow_cidrs: ["', 'allow_cidrs: ["127.0.0.0/8", "')
    (tmp_path / "config.yaml").write_text(text)
    env |= {"SHIM_CONFIG": str(tmp_path / "config.yaml"), "SHIM_PORT": str(ports["shim-sandbox"])}

    def command(name: str) -> list[str]:
        """The service's compose command, its variables expanded, the compose hostnames and ports mapped."""
        args = [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], a)
                .replace("http://shim-sandbox:8080", f"http://127.0.0.1:{ports['shim-sandbox']}")
                for a in compose[name]["command"]]
        args[args.index("--port") + 1] = str(ports[name])
        return [sys.executable, "-m", "shim", *args]

    procs = {name: subprocess.Popen(command(name), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True) for name in ("receiver", "sandbox")}
    shim = subprocess.Popen([sys.executable, "-m", "shim", "serve"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        receiver, sandbox = procs["receiver"], procs["sandbox"]
        assert receiver.stdout is not None and sandbox.stdout is not None and shim.stderr is not None
        assert "shim receiver on" in receiver.stdout.readline()
        assert "shim sandbox (v2 simulator) on" in sandbox.stdout.readline()
        for line in shim.stderr:
            if "shim started" in line:
                break
        body = json.dumps({"from": "+15551230001", "to": "+15551230002", "text": "hi", "receiptRequested": "all",
                           "callbackUrl": f"http://127.0.0.1:{ports['receiver']}/cb"}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{ports['shim-sandbox']}/v1/users/u-sandbox/messages", data=body,
                                     headers={"Content-Type": "application/json", "Authorization": "Basic " + b64encode(
                                         f"t-sandbox:{env['SHIM_SANDBOX_API_SECRET']}".encode()).decode()})
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=10) as r:
            assert r.status == 201
        callback = json.loads(receiver.stdout.readline())
        assert callback["path"] == "/cb" and callback["webhook-id"] and '"hi"' in callback["body"]
    finally:
        for p in [*procs.values(), shim]:
            p.terminate()
            p.communicate(timeout=30)


def test_the_runbook_names_every_metric() -> None:
    source = (ROOT / "shim" / "ops" / "_metrics.py").read_text()
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    metrics = re.findall(r'(Counter|Gauge|Histogram)\(\s*"(shim_\w+)"', source)
    assert len(metrics) >= 10
    for kind, name in metrics:
        shown = f"{name}_total" if kind == "Counter" else name  # how Prometheus exposes it
        assert f"`{shown}" in runbook, f"docs/runbook.md does not describe {shown}"
