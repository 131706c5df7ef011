"""The code location: every asset, job and resource, configured from the environment."""

import os

import dagster as dg

from embedding_assets.assets.curation import quality_classifier, scored_corpus
from embedding_assets.assets.features import features
from embedding_assets.assets.ingest import raw_corpus, training_sample
from embedding_assets.assets.teacher import teacher_embeddings
from embedding_assets.assets.training import distilled_model
from embedding_assets.checks import curation as curation_checks
from embedding_assets.checks import features as features_checks
from embedding_assets.checks import ingest as ingest_checks
from embedding_assets.checks import teacher as teacher_checks
from embedding_assets.checks import training as training_checks
from embedding_assets.jobs import ingest_corpus, score_corpus, train_embedder
from embedding_assets.resources import Compute, CorpusSource, QualityGates, Storage, Teacher
from embedding_assets.resources.teacher import DEFAULT_TEACHER
from embedding_assets.sample_corpus import SAMPLE_CORPUS_DIR


def resources_from_env() -> dict:
    env = os.environ.get
    return {
        "corpus": CorpusSource(location=env("EMBEDDING_ASSETS_CORPUS", str(SAMPLE_CORPUS_DIR))),
        "storage": Storage(base=env("EMBEDDING_ASSETS_STORAGE", "data/storage")),
        "teacher": Teacher(model=env("EMBEDDING_ASSETS_TEACHER", DEFAULT_TEACHER)),
        "compute": Compute(device=env("EMBEDDING_ASSETS_DEVICE", "auto")),
        "gates": QualityGates(),
    }


ALL_ASSETS = [raw_corpus, training_sample, features, teacher_embeddings, distilled_model, quality_classifier, scored_corpus]
ALL_CHECKS = dg.load_asset_checks_from_modules([ingest_checks, features_checks, teacher_checks, training_checks, curation_checks])

defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_CHECKS,
    jobs=[ingest_corpus, train_embedder, score_corpus],
    resources=resources_from_env(),
)
