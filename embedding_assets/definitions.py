"""The code location: every asset, job and resource, configured from the environment."""

import os

import dagster as dg

from embedding_assets.assets.curation import quality_classifier, scored_corpus
from embedding_assets.assets.features import features
from embedding_assets.assets.ingest import corpus_id_index, raw_corpus, training_sample
from embedding_assets.assets.report import corpus_report
from embedding_assets.assets.reference import annotations, reference_set
from embedding_assets.assets.selection import clusters, near_duplicates, selection
from embedding_assets.assets.teacher import teacher_embeddings, teacher_model
from embedding_assets.assets.training import distilled_model
from embedding_assets.checks import curation as curation_checks
from embedding_assets.checks import features as features_checks
from embedding_assets.checks import ingest as ingest_checks
from embedding_assets.checks import reference as reference_checks
from embedding_assets.checks import selection as selection_checks
from embedding_assets.checks import teacher as teacher_checks
from embedding_assets.checks import training as training_checks
from embedding_assets.jobs import EXECUTOR, ingest_corpus, prepare_curation, refresh_shard, score_corpus, select_corpus, train_embedder
from embedding_assets.jobs.sensors import corpus_shard_sensor, scored_corpus_refresh
from embedding_assets.resources import Compute, CorpusSource, Curation, Storage, Teacher
from embedding_assets.resources.gates import gates_from_env
from embedding_assets.resources.s3 import S3Settings
from embedding_assets.resources.teacher import DEFAULT_TEACHER
from embedding_assets.sample_corpus import NETWORKING_LABELS, SAMPLE_CORPUS_DIR


def s3_settings_from_env() -> S3Settings:
    """S3 settings shared by the corpus and the storage; unset ones fall back to boto3's AWS_* variables."""
    env = os.environ.get
    return S3Settings(
        endpoint_url=env("EMBEDDING_ASSETS_S3_ENDPOINT_URL") or None,
        region_name=env("EMBEDDING_ASSETS_S3_REGION") or None,
        profile_name=env("EMBEDDING_ASSETS_S3_PROFILE") or None,
        max_attempts=int(env("EMBEDDING_ASSETS_S3_MAX_ATTEMPTS") or 5),
    )


def curation_from_env(corpus: str, s3: S3Settings) -> Curation:
    """The curation settings; on the built-in sample with nothing set, its own networking labels."""
    env = os.environ.get
    labels = [label.strip() for label in (env("EMBEDDING_ASSETS_POSITIVE_LABELS") or "").split(",") if label.strip()]
    mode = env("EMBEDDING_ASSETS_CURATION") or "auto"
    settings = {
        "reference": env("EMBEDDING_ASSETS_REFERENCE") or "",
        "negative_reference": env("EMBEDDING_ASSETS_NEGATIVE_REFERENCE") or "",
        "annotations": env("EMBEDDING_ASSETS_ANNOTATIONS") or "",
    }
    if not labels and not any(settings.values()) and mode in ("auto", "labels") and os.path.realpath(corpus) == os.path.realpath(SAMPLE_CORPUS_DIR):
        labels = list(NETWORKING_LABELS)
    optional = {
        "keep_fraction": number_from_env("EMBEDDING_ASSETS_KEEP_FRACTION", float),
        "top_k": number_from_env("EMBEDDING_ASSETS_TOP_K", int),
    }
    return Curation(mode=mode, positive_labels=labels, s3=s3, **settings, **{k: v for k, v in optional.items() if v is not None})


def number_from_env(variable: str, kind: type):
    """The variable's number, None when it is unset or empty; 0 is a value like any other, for the
    settings to honour or refuse by name."""
    raw = (os.environ.get(variable) or "").strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{variable}={raw!r}: expected {'an integer' if kind is int else 'a number'}") from None


def resources_from_env() -> dict:
    env = os.environ.get
    s3 = s3_settings_from_env()
    corpus = env("EMBEDDING_ASSETS_CORPUS", str(SAMPLE_CORPUS_DIR))
    return {
        "corpus": CorpusSource(location=corpus, s3=s3),
        "curation": curation_from_env(corpus, s3),
        "storage": Storage(base=env("EMBEDDING_ASSETS_STORAGE", "data/storage"), s3=s3, keep_versions=int(env("EMBEDDING_ASSETS_KEEP_VERSIONS") or 3)),
        "teacher": Teacher(model=env("EMBEDDING_ASSETS_TEACHER", DEFAULT_TEACHER)),
        "compute": Compute(
            device=env("EMBEDDING_ASSETS_DEVICE", "auto"),
            precision=env("EMBEDDING_ASSETS_PRECISION", "fp16"),
            cpu_threads=int(env("EMBEDDING_ASSETS_CPU_THREADS") or 0),
        ),
        "gates": gates_from_env(),
    }


ALL_ASSETS = [raw_corpus, corpus_id_index, training_sample, features, teacher_model, teacher_embeddings, distilled_model, reference_set, annotations, quality_classifier, scored_corpus]
ALL_ASSETS += [clusters, near_duplicates, selection, corpus_report]
ALL_CHECKS = dg.load_asset_checks_from_modules([ingest_checks, features_checks, teacher_checks, training_checks, reference_checks, curation_checks, selection_checks])

defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_CHECKS,
    jobs=[ingest_corpus, prepare_curation, train_embedder, score_corpus, refresh_shard, select_corpus],
    sensors=[corpus_shard_sensor, scored_corpus_refresh],
    resources=resources_from_env(),
    executor=EXECUTOR,
)
