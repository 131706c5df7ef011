"""`workspace.yaml` loads the code location into a real Dagster webserver, which shows the graph."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ASSET_GRAPH_QUERY = """
{
  assetNodes {
    assetKey { path }
    groupName
    kinds
    assetChecksOrError { ... on AssetChecks { checks { name blocking } } }
  }
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def webserver(tmp_path):
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "EMBEDDING_ASSETS_STORAGE": str(tmp_path / "storage")}
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("the webserver did not start in 120 s")
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_webserver_shows_every_asset_group_kind_and_check(webserver):
    deadline = time.monotonic() + 60
    while True:
        data = graphql(webserver, ASSET_GRAPH_QUERY)
        nodes = data.get("data", {}).get("assetNodes") or []
        if nodes or time.monotonic() > deadline:
            break
        time.sleep(1)
    by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    assert set(by_key) == {"raw_corpus", "training_sample", "features", "teacher_model", "teacher_embeddings", "distilled_model", "quality_classifier", "scored_corpus"}
    assert by_key["raw_corpus"]["groupName"] == "ingest"
    assert by_key["distilled_model"]["groupName"] == "training"
    assert by_key["scored_corpus"]["groupName"] == "curation"
    assert "pytorch" in by_key["distilled_model"]["kinds"]
    checks = {c["name"]: c["blocking"] for n in nodes for c in n["assetChecksOrError"]["checks"]}
    assert len(checks) == 10 and all(checks.values())
