"""The code location loads through Dagster's CLIs, and an install claims no generic module names."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parents[1]
ASSETS = {"raw_corpus", "training_sample", "features", "teacher_embeddings", "distilled_model", "quality_classifier", "scored_corpus"}


def test_definitions_hold_the_seven_assets_and_three_jobs():
    from embedding_assets.definitions import defs

    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert keys == ASSETS
    for job in ("ingest_corpus", "train_embedder", "score_corpus"):
        defs.resolve_job_def(job)


def test_dagster_cli_lists_the_seven_assets(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "list", "-m", "embedding_assets.definitions"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    ).stdout
    assert set(out.split()) >= ASSETS


def test_wheel_installs_without_generic_top_level_modules(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    wheel = next(tmp_path.glob("embedding_assets-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"embedding_assets"}
    assert "embedding_assets/jobs/__init__.py" in names and "embedding_assets/resources/storage.py" in names
    assert any(n.startswith("embedding_assets/data/sample_corpus/") for n in names)
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    probe = "import embedding_assets.definitions as d, embedding_assets.jobs, embedding_assets.resources; print(d.defs is not None)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    assert dg.__version__.startswith("1.13")
