"""The nginx v2 upstream stand-in for ``make bench``: plain HTTP and TLS (a self-signed
certificate made with ``openssl`` at bench time), one process, no access log.

``POST /users/{account}/messages`` answers 202 with a v2 message whose ``id`` has Bandwidth's
shape: the epoch milliseconds in 13 digits, then 16 random characters (the OpenAPI examples'
``1593110555875xo7watq5px6rbe5d``; here the first 16 hex digits of nginx's ``$request_id``), so
ids sort by time as Bandwidth's do, which decides where in its indexes the store writes them;
``GET /`` answers 200 (the readiness probe).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

V2_MESSAGE = ('{"id":"${v2_ms}${v2_rnd}","owner":"+15551230001","applicationId":"app-bench",'
              '"time":"2026-01-01T00:00:00.000Z","segmentCount":1,"direction":"out",'
              '"to":["+15550000000"],"from":"+15551230001","text":"bench"}')


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").is_file():
        found = "/usr/sbin/nginx"
    return found


def make_cert(tmp: Path) -> tuple[Path, Path] | None:
    """A self-signed certificate for 127.0.0.1 (also its own CA: shim trusts it through
    SSL_CERT_FILE), or None without openssl."""
    if shutil.which("openssl") is None:
        return None
    cert, key = tmp / "upstream-cert.pem", tmp / "upstream-key.pem"
    done = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                           "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                           "-addext", "subjectAltName=IP:127.0.0.1",
                           "-addext", "basicConstraints=critical,CA:TRUE"],
                          capture_output=True, check=False, timeout=60)
    return (cert, key) if done.returncode == 0 else None


def config(prefix: Path, port: int, tls_port: int | None, cert: tuple[Path, Path] | None) -> Path:
    """nginx.conf under ``prefix``: one process (no master), keep-alive without limit."""
    prefix.mkdir(parents=True, exist_ok=True)
    tls = ""
    if tls_port is not None and cert is not None:
        tls = (f"        listen 127.0.0.1:{tls_port} ssl;\n"
               f"        ssl_certificate {cert[0]};\n"
               f"        ssl_certificate_key {cert[1]};\n"
               "        ssl_session_cache shared:tls:1m;\n")
    conf = prefix / "nginx.conf"
    conf.write_text(f"""\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    map $msec $v2_ms {{ "~^(?<s>[0-9]+)[.](?<m>[0-9]+)$" $s$m; }}
    map $request_id $v2_rnd {{ "~^(?<r>.{{16}})" $r; }}
    server {{
        listen 127.0.0.1:{port};
{tls}        location ~ ^/users/[^/]+/messages$ {{
            default_type application/json;
            return 202 '{V2_MESSAGE}';
        }}
        location = / {{
            return 200 'ok';
        }}
    }}
}}
""")
    return conf
