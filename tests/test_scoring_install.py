"""The base install scores: a venv without torch or scikit-learn scores a shard as the full install did.

The venv (`.venv-base/`) gets the project from this checkout, without extras, under
`constraints.txt`. It is built from nothing when the base dependencies or constraints.txt change
(so in CI's fresh clone, every time: a few minutes), and otherwise only the project is
reinstalled into it. It materialises `scored_corpus` for one shard, with its gates, through
Dagster, from a copy of the storage the full install trained into.
"""

import hashlib
import json
import os
import shutil
import subprocess
import tomllib
import venv
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from conftest import stored_file

ROOT = Path(__file__).resolve().parent.parent
BASE_VENV = ROOT / ".venv-base"

SCORE = r"""
import importlib.util, json, sys
import dagster as dg
from embedding_assets.definitions import ALL_ASSETS, ALL_CHECKS, resources_from_env
from embedding_assets.resources import Storage
import embedding_assets

storage, shard, home = sys.argv[1], sys.argv[2], sys.argv[3]
with dg.DagsterInstance.local_temp(home) as instance:
    result = dg.materialize(ALL_ASSETS + ALL_CHECKS, selection=["scored_corpus"], partition_key=shard, instance=instance,
                            resources={**resources_from_env(), "storage": Storage(base=storage)})
    checks = [e.asset_check_evaluation_data.passed for e in result.all_events if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION]
print(json.dumps({"success": result.success, "checks": checks, "package": embedding_assets.__file__,
                  "installed": [m for m in ("torch", "sklearn", "sentence_transformers") if importlib.util.find_spec(m)],
                  "imported": [m for m in ("torch", "sklearn", "great_expectations") if m in sys.modules]}))
"""


def base_venv(env: dict, cwd: Path) -> Path:
    """The python of a venv holding the base install of this checkout, and nothing else."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    stamp = hashlib.sha256(json.dumps(dependencies).encode() + (ROOT / "constraints.txt").read_bytes()).hexdigest()
    python = BASE_VENV / "bin" / "python"
    pip = [python, "-m", "pip", "install", "-q", "-c", ROOT / "constraints.txt"]
    stamp_file = BASE_VENV / ".requirements-sha256"
    if python.exists() and stamp_file.exists() and stamp_file.read_text().strip() == stamp:
        subprocess.run([*pip, "--no-deps", "--force-reinstall", ROOT], check=True, env=env, cwd=cwd)
    else:
        shutil.rmtree(BASE_VENV, ignore_errors=True)
        venv.create(BASE_VENV, with_pip=True)
        subprocess.run([*pip, ROOT], check=True, env=env, cwd=cwd)
        stamp_file.write_text(stamp)
    return python


def test_base_install_without_torch_scores_a_shard_equally(pipeline, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    python = base_venv(env, tmp_path)

    storage = tmp_path / "storage"
    shutil.copytree(pipeline["storage"], storage)
    home = tmp_path / "dagster_home"
    shutil.copytree(pipeline["instance"].root_directory, home)
    shard = sorted(pipeline["ids"])[0]
    scored_before = stored_file(storage, "scored_corpus", shard)
    out = subprocess.run([python, "-c", SCORE, str(storage), shard, str(home)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["package"].startswith(str(BASE_VENV)), "the venv must run its installed copy, not this checkout"
    assert report["installed"] == [] and "torch" not in report["imported"] and "sklearn" not in report["imported"]
    assert report["success"] and report["checks"] and all(report["checks"])

    full = pq.read_table(stored_file(pipeline["storage"], "scored_corpus", shard))
    base = pq.read_table(stored_file(storage, "scored_corpus", shard))
    assert stored_file(storage, "scored_corpus", shard) != scored_before  # a new version, written by the base install
    assert base["id"].to_pylist() == full["id"].to_pylist() and len(full) > 0
    assert np.array_equal(base["score"].to_numpy(), full["score"].to_numpy())
    assert base["keep"].to_pylist() == full["keep"].to_pylist()
    assert base["embedding"].to_pylist() == full["embedding"].to_pylist()
    assert base["model_version"].to_pylist() == full["model_version"].to_pylist()


def test_base_install_loads_the_code_location_from_the_repository_root(tmp_path):
    # From the root, the checkout's embedding_assets/ comes first on sys.path and shadows the installed
    # copy: it must hold every module the installed one does, jobs and resources included.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    python = base_venv(env, tmp_path)
    listed = subprocess.run(
        [python, "-m", "dagster", "asset", "list", "-m", "embedding_assets.definitions"],
        env={**env, "DAGSTER_HOME": str(tmp_path)}, cwd=ROOT, capture_output=True, text=True,
    )
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert {"raw_corpus", "scored_corpus", "selection"} <= set(listed.stdout.split())
