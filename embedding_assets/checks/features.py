"""Gates on the features: vocabulary size and IDF, and how much of the sample the vocabulary covers."""

import dagster as dg
import numpy as np
import pandas as pd

from embedding_assets import paths, versions
from embedding_assets.assets.features import features
from embedding_assets.checks.expectations import validate
from embedding_assets.checks.reasons import bounds_table
from embedding_assets.engine.features import Features
from embedding_assets.resources import QualityGates, Storage


@dg.asset_check(asset=features, blocking=True, description="Vocabulary size within bounds; every IDF finite and > 0.")
def features_vocabulary(context: dg.AssetCheckExecutionContext, storage: Storage, gates: QualityGates) -> dg.AssetCheckResult:
    feats = Features.from_bytes(storage.read_bytes(*versions.latest(context, "features").file(paths.FEATURES_FILE)))
    idf = feats.vocabulary.idf.astype(np.float64)
    frame = pd.DataFrame({"idf": np.where(np.isfinite(idf), idf, np.nan), "document_frequency": feats.document_frequency})

    def expectations(gxe):
        return [
            gxe.ExpectTableRowCountToBeBetween(min_value=gates.min_vocabulary_size, max_value=gates.max_vocabulary_size),
            gxe.ExpectColumnValuesToNotBeNull(column="idf"),
            gxe.ExpectColumnValuesToBeBetween(column="idf", min_value=0.0, strict_min=True),
            gxe.ExpectColumnValuesToBeBetween(column="document_frequency", min_value=1),
        ]

    return validate(frame, "features.vocabulary", expectations, {"vocabulary_size": feats.vocabulary.size, "non_finite_idf": int((~np.isfinite(idf)).sum())})


@dg.asset_check(asset=features, blocking=True, description="Share of sample documents with at least one known n-gram; n-grams per document.")
def features_coverage(context: dg.AssetCheckExecutionContext, storage: Storage, gates: QualityGates) -> dg.AssetCheckResult:
    feats = Features.from_bytes(storage.read_bytes(*versions.latest(context, "features").file(paths.FEATURES_FILE)))
    nnz = np.diff(feats.tfidf.indptr)
    coverage = float(np.mean(nnz > 0)) if len(nnz) else 0.0
    uncovered = [feats.ids[i] for i in np.flatnonzero(nnz == 0)[: gates.failing_ids_cap]]
    quantiles = np.quantile(nnz, [0.0, 0.1, 0.5, 0.9, 1.0]) if len(nnz) else np.zeros(5)
    passed = coverage >= gates.min_coverage
    return dg.AssetCheckResult(
        passed=passed,
        metadata={
            "bounds": bounds_table([("share of sample documents with a known n-gram", f"{coverage:.4f}", f">= {gates.min_coverage} (QualityGates.min_coverage)", passed)]),
            "coverage": round(coverage, 4),
            **({"uncovered_ids": uncovered} if uncovered else {}),
            "ngrams_per_document": dg.MetadataValue.table(
                [dg.TableRecord({"quantile": q, "ngrams": int(v)}) for q, v in zip(["min", "p10", "median", "p90", "max"], quantiles)],
                schema=dg.TableSchema(columns=[
                    dg.TableColumn("quantile", "string", "quantile over the sample's documents"),
                    dg.TableColumn("ngrams", "int", "distinct vocabulary n-grams in a document at that quantile"),
                ]),
            ),
        },
    )
