"""The install the Dockerfile runs (``pip install .``) yields a working package with its data
files, and the shipped configs validate. (No Docker engine runs here; hadolint lints the file.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shim.config import load_config

ROOT = Path(__file__).resolve().parents[1]
ENV = {"SHIM_DB_PASSWORD": "d", "SHIM_API_SECRET": "api-secret-123", "SHIM_V2_PASSWORD": "v",
       "SHIM_CALLBACK_PASSWORD": "callback-pass-1", "SHIM_SIGNING_SECRET": "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM=",
       "SHIM_ADMIN_PASSWORD": "admin-pass-123"}


def test_installed_package_has_its_data(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--target", str(target), str(ROOT)], check=True, timeout=300, capture_output=True)
    code = ("import shim, shim.core as o, shim.core as d; "
            f"assert str(shim.__file__).startswith({str(target)!r}), shim.__file__; "
            "assert o.load_spec()['components']['schemas']['messageRequest']; "
            "assert d.v2_names()[4432] == 'rejected-forbidden-country'; "
            "from shim.console import web_console as w; "
            "assert all(w._env.get_template(t) for t in ('search.html', 'timeline.html', 'deliveries.html',"
            " 'confirm.html', 'migration.html', 'health.html', 'error.html')); "
            "assert b'font' in w._CSS; print('ok')")
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_compose_config_validates() -> None:
    cfg = load_config(ROOT / "deploy" / "config.compose.yaml", env=ENV)
    assert cfg.server.host == "0.0.0.0" and cfg.store.url.startswith("postgresql://shim:d@db")
    assert "shim-1" in (ROOT / "docker-compose.yml").read_text()


def test_dockerfile_runs_shim_as_non_root_with_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "USER 10001" in text and "HEALTHCHECK" in text and '/healthz' in text
    assert 'ENTRYPOINT ["shim"]' in text
