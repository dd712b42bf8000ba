"""`nvcf-sidecar dev` runs NVIDIA's samples unchanged: what a wrong health endpoint answers is
shown, servers run in a configured directory and read their secrets as on NVCF.

Real processes on loopback (`nvcf-sidecar dev` with nats-server, the platform, the hello example
and its sidecar).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from harness.http import http_request
from harness.ports import free_ports
from harness.processes import StartProcess
from nvcf_platform.devstack.dev_config import specs_from_mapping
from nvcf_platform.errors import ConfigError

pytestmark = [pytest.mark.nats, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "byoc" / "hello" / "server.py"
DEV = [sys.executable, "-m", "nvcf_sidecar.cli", "dev"]


def test_a_wrong_health_endpoint_is_shown_with_the_servers_answer(
    start_process: StartProcess, tmp_path: Path
) -> None:
    platform_port, inference_port = free_ports(2)
    command = [*DEV, "--port", str(platform_port), "--timeout", "5"]
    command += ["--inference-port", str(inference_port), "--health-endpoint", "/wrong"]
    command += ["--", sys.executable, str(HELLO), "--port", str(inference_port)]
    dev = start_process(command, name="dev")
    assert dev.wait_exit(60) == 1
    output = dev.log_text()
    url = f"http://127.0.0.1:{inference_port}/wrong"
    # While waiting: the answers as they change; at the end: the endpoint and its answer.
    waiting = rf"^\[dev\] function function version \S+: server {re.escape(url)} answers 404; "
    assert re.search(waiting, output, re.M), output
    error = re.search(
        r"^\[dev\] error: function function version \S+ is DEPLOYING \((.*)\)$", output, re.M
    )
    assert error is not None, output
    assert error.group(1).startswith(f"server {url} answers 404; sidecar http://127.0.0.1:")


# Answers GET health and POST / with its directory and the secrets both helpers read.
SECRETS_SERVER = """
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from nvcf_worker import read_secrets
from nvcf_worker.compat import get_secrets

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = {"cwd": os.getcwd(), "read": read_secrets(), "compat": get_secrets()}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def test_config_cwd_and_secrets_reach_the_server_as_on_nvcf(
    start_process: StartProcess, tmp_path: Path
) -> None:
    platform_port, file_port, inline_port = free_ports(3)
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "server.py").write_text(SECRETS_SERVER)
    (tmp_path / "secrets.json").write_text(json.dumps({"HF_TOKEN": "hf_file"}))
    config = tmp_path / "functions.toml"
    config.write_text(
        f"""
[[functions]]
name = "from-file"
cwd = "app"
command = "{sys.executable} server.py {file_port}"
inference_port = {file_port}
secrets = "secrets.json"

[[functions]]
name = "inline"
cwd = "app"
command = "{sys.executable} server.py {inline_port}"
inference_port = {inline_port}
secrets = {{ HF_TOKEN = "hf_inline", nested = {{ n = 1 }} }}
"""
    )
    key = "test-key"
    command = [*DEV, "--port", str(platform_port), "--api-key", key, "--config", str(config)]
    dev = start_process(command, name="dev")
    dev.wait_for_log("[dev] Ctrl-C stops everything.", timeout=60)
    ids = dict(re.findall(r"^\[dev\] function (\S+), id (\S+):$", dev.log_text(), re.M))
    expected = {
        "from-file": {"HF_TOKEN": "hf_file"},
        "inline": {"HF_TOKEN": "hf_inline", "nested": {"n": 1}},
    }
    for name, secrets in expected.items():
        response = http_request(
            "POST",
            f"http://127.0.0.1:{platform_port}/v2/nvcf/pexec/functions/{ids[name]}",
            body=b"{}",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            timeout=30,
        )
        assert response.status == 200, response.body
        answer = response.json()
        assert Path(answer["cwd"]) == (tmp_path / "app").resolve()
        assert answer["read"] == answer["compat"] == secrets
    assert dev.stop() == 0


def test_model_names_the_health_endpoint_and_config_mistakes_name_the_key(tmp_path: Path) -> None:
    base = {"name": "f", "command": "server", "inference_port": 8000}
    (spec,) = specs_from_mapping({"functions": [{**base, "model": "timed_sleeper"}]})
    assert spec.health_endpoint == "/v2/models/timed_sleeper/ready"
    (tmp_path / "bad.json").write_text('{"HF_TOKEN": "hf_secret"')
    mistakes = [
        ({"model": "m", "health_endpoint": "/h"}, "functions\\[0\\]\\.model: give either model or"),
        ({"cwd": "missing"}, "functions\\[0\\]\\.cwd: 'missing' is not a directory"),
        ({"secrets": "bad.json"}, "functions\\[0\\]\\.secrets: .*bad.json is not UTF-8 JSON"),
        ({"secrets": "none.json"}, "functions\\[0\\]\\.secrets: cannot read"),
    ]
    for extra, message in mistakes:
        with pytest.raises(ConfigError, match=message) as raised:
            specs_from_mapping({"functions": [{**base, **extra}]}, base_dir=tmp_path)
        assert "hf_secret" not in str(raised.value)
