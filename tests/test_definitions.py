"""The code location loads through Dagster's CLIs, and an install claims no generic module names."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parents[1]
ASSETS = {"raw_corpus", "corpus_id_index", "training_sample", "features", "teacher_model", "teacher_embeddings", "distilled_model", "reference_set", "annotations", "quality_classifier", "scored_corpus", "clusters", "near_duplicates", "selection", "corpus_report"}


def test_definitions_hold_every_asset_and_job():
    from embedding_assets.definitions import defs

    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert keys == ASSETS
    for job in ("ingest_corpus", "prepare_curation", "train_embedder", "score_corpus", "refresh_shard", "select_corpus"):
        defs.resolve_job_def(job)


def test_dagster_cli_lists_every_asset(tmp_path):
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
    assert "embedding_assets/assets/training.py" in names and "embedding_assets/checks/training.py" in names
    assert any(n.startswith("embedding_assets/data/sample_corpus/") for n in names)
    assert "embedding_assets/data/sample_reference/networking.parquet" in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    probe = "import embedding_assets.definitions as d, embedding_assets.jobs, embedding_assets.resources; print(d.defs is not None)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    assert dg.__version__.startswith("1.13")


def test_environment_switches_storage_corpus_and_device(monkeypatch):
    from embedding_assets.definitions import resources_from_env

    monkeypatch.setenv("EMBEDDING_ASSETS_STORAGE", "s3://bucket/outputs")
    monkeypatch.setenv("EMBEDDING_ASSETS_CORPUS", "s3://bucket/corpus")
    monkeypatch.setenv("EMBEDDING_ASSETS_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("EMBEDDING_ASSETS_S3_REGION", "eu-west-1")
    monkeypatch.setenv("EMBEDDING_ASSETS_DEVICE", "cuda:1")
    monkeypatch.setenv("EMBEDDING_ASSETS_PRECISION", "bf16")
    resources = resources_from_env()
    assert resources["storage"].uri("model.safetensors") == "s3://bucket/outputs/model.safetensors"
    for name in ("storage", "corpus"):
        s3 = resources[name].s3
        assert (s3.endpoint_url, s3.region_name, s3.profile_name) == ("http://127.0.0.1:9000", "eu-west-1", None)
    client = resources["storage"].s3.resource().get_client()
    assert client.meta.endpoint_url == "http://127.0.0.1:9000" and client.meta.region_name == "eu-west-1"
    assert (resources["compute"].device, resources["compute"].precision) == ("cuda:1", "bf16")


def test_bad_resource_settings_are_refused_by_name():
    import pydantic
    import pytest

    from embedding_assets.resources import Compute, CorpusSource, Storage, Teacher

    cases = [
        (lambda: Compute(device="gpu"), "compute device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
        (lambda: Compute(cpu_threads=-1), "cpu_threads must be >= 0"),
        (lambda: Teacher(batch_size=0), "teacher batch_size must be >= 1, got 0"),
        (lambda: Teacher(max_seq_length=0), "teacher max_seq_length must be >= 1"),
        (lambda: CorpusSource(batch_size=0), "corpus batch_size must be >= 1"),
        (lambda: Storage(base="gs://bucket/x"), "storage base must be a local directory or s3://bucket/prefix"),
    ]
    for build, message in cases:
        with pytest.raises(pydantic.ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
            build()


def test_teacher_normalisation_is_part_of_its_identity():
    from embedding_assets.resources import Teacher

    assert Teacher().identity()["sha256"] != Teacher(normalize=False).identity()["sha256"]
    assert Teacher(normalize=False).identity()["normalize"] is False


def test_cuda_without_a_gpu_fails_by_name():
    import pytest
    import torch

    from embedding_assets.resources import Compute

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(dg.Failure, match="compute device is 'cuda' but torch sees no CUDA device"):
        Compute(device="cuda").torch_device()
    assert Compute(device="auto").torch_device() == "cpu"
