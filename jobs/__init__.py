"""Jobs: ingest shards, train the embedder and classifier, score shards, refresh a shard end to end.

The executor is the code location's (`Definitions(executor=EXECUTOR)`), so every run uses it: these
jobs, and the runs that automation, the UI and backfills launch. It comes from EMBEDDING_ASSETS_EXECUTOR: `multiprocess` (default; each step in its own
process, at most EMBEDDING_ASSETS_MAX_CONCURRENT at a time, default 2) or `k8s` (each step in its
own pod through dagster-k8s, which must then be installed: the `k8s` extra).
"""

import os
import warnings

import dagster as dg

from embedding_assets.assets.curation import quality_classifier, scored_corpus
from embedding_assets.assets.features import features
from embedding_assets.assets.ingest import corpus_id_index, raw_corpus, training_sample
from embedding_assets.assets.reference import annotations, reference_set
from embedding_assets.assets.report import corpus_report
from embedding_assets.assets.selection import clusters, near_duplicates, selection
from embedding_assets.assets.teacher import teacher_embeddings, teacher_model
from embedding_assets.assets.training import distilled_model

EXECUTORS = ("multiprocess", "k8s")

# raw_corpus ingests one shard per run, so a bad shard fails alone; scored_corpus scores up to 16 per
# run. A job holding both (refresh_shard, and the implicit asset jobs of the UI and automation) takes
# the smaller, one shard per run, which is what the corpus sensor requests: the mix is deliberate.
warnings.filterwarnings("ignore", message=r"Asset job \S+ materializes assets with varying BackfillPolicies", category=UserWarning)


def max_concurrent_from_env() -> int:
    return int(os.environ.get("EMBEDDING_ASSETS_MAX_CONCURRENT") or 2)


def executor_from_env() -> dg.ExecutorDefinition:
    name = os.environ.get("EMBEDDING_ASSETS_EXECUTOR") or "multiprocess"
    if name not in EXECUTORS:
        raise ValueError(f"EMBEDDING_ASSETS_EXECUTOR must be one of {EXECUTORS}, got {name!r}")
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        # Its config (namespace, per-run pod limit) is run config: deploy/run_config.yaml.
        return k8s_job_executor
    # forkserver starts each step process faster than spawn.
    return dg.multiprocess_executor.configured(
        {"max_concurrent": max_concurrent_from_env(), "start_method": {"forkserver": {}}}, name="multiprocess"
    )


EXECUTOR = executor_from_env()

ingest_corpus = dg.define_asset_job(
    "ingest_corpus",
    selection=dg.AssetSelection.assets(raw_corpus),
    description="Read one corpus shard into the corpus contract.",
)

# Read and checked before training, so a bad reference set fails before the teacher runs.
prepare_curation = dg.define_asset_job(
    "prepare_curation",
    selection=dg.AssetSelection.assets(reference_set, annotations),
    description="Read the reference set or the annotations the curation mode learns from, and check them.",
)

train_embedder = dg.define_asset_job(
    "train_embedder",
    selection=dg.AssetSelection.assets(corpus_id_index, training_sample, features, teacher_model, teacher_embeddings, distilled_model, quality_classifier, clusters),
    description="The corpus id index and its uniqueness gate, then from the corpus sample to the distilled model, the curation head and the clusters the scored shards are assigned to.",
)

score_corpus = dg.define_asset_job(
    "score_corpus",
    selection=dg.AssetSelection.assets(scored_corpus),
    description="Score one shard with the current model and classifier.",
)

refresh_shard = dg.define_asset_job(
    "refresh_shard",
    selection=dg.AssetSelection.assets(raw_corpus, scored_corpus),
    description="Ingest one new or rewritten shard and score it; what the corpus sensor requests.",
)

select_corpus = dg.define_asset_job(
    "select_corpus",
    selection=dg.AssetSelection.assets(corpus_id_index, near_duplicates, selection, corpus_report),
    description=(
        "The corpus id index and its uniqueness gate over every shard as it is now (shards the corpus sensor added since training "
        "included), then near-duplicate groups across the scored shards it holds, the final keep list, and the corpus report."
    ),
)

CURATION_INPUTS = {"reference-classifier": reference_set, "reference-similarity": reference_set, "annotations": annotations}


def pipeline(curation_mode: str) -> list[tuple]:
    """The jobs that materialise the whole graph, in order, each with the assets it runs (None: all):
    every shard, the input the curation mode reads, training, every shard scored, then the selection."""
    steps = [(ingest_corpus, None)]
    if curation_mode in CURATION_INPUTS:
        steps.append((prepare_curation, [CURATION_INPUTS[curation_mode].key.to_user_string()]))
    return [*steps, (train_embedder, None), (score_corpus, None), (select_corpus, None)]
