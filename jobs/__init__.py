"""Jobs: ingest shards, train the embedder and classifier, score shards."""

import dagster as dg

from embedding_assets.assets.curation import quality_classifier, scored_corpus
from embedding_assets.assets.features import features
from embedding_assets.assets.ingest import raw_corpus, training_sample
from embedding_assets.assets.teacher import teacher_embeddings, teacher_model
from embedding_assets.assets.training import distilled_model

ingest_corpus = dg.define_asset_job(
    "ingest_corpus",
    selection=dg.AssetSelection.assets(raw_corpus),
    description="Read one corpus shard into the corpus contract.",
)

train_embedder = dg.define_asset_job(
    "train_embedder",
    selection=dg.AssetSelection.assets(training_sample, features, teacher_model, teacher_embeddings, distilled_model, quality_classifier),
    description="From the corpus sample to the distilled model and the quality classifier.",
)

score_corpus = dg.define_asset_job(
    "score_corpus",
    selection=dg.AssetSelection.assets(scored_corpus),
    description="Score one shard with the current model and classifier.",
)

# In this order they materialise the whole graph: every shard, then training, then every shard.
PIPELINE = (ingest_corpus, train_embedder, score_corpus)
