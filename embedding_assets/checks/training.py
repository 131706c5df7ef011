"""Gates on the student: fidelity floors on held-out documents, finite weights, a file that reloads faithfully."""

import dagster as dg
import numpy as np

from embedding_assets import paths, versions
from embedding_assets.assets.training import distilled_model
from embedding_assets.engine import LexicalEmbedder
from embedding_assets.engine.features import Features
from embedding_assets.resources import QualityGates, Storage
from embedding_assets.stored import model_config, read_sample

RELOAD_DOCUMENTS = 256


@dg.asset_check(asset=distilled_model, blocking=True, description="Held-out recall@10 and Spearman against the teacher at or above their floors, and clearly above the untrained network.")
def distilled_model_fidelity(context: dg.AssetCheckExecutionContext, storage: Storage, gates: QualityGates) -> dg.AssetCheckResult:
    evaluation = model_config(storage, versions.latest(context, "distilled_model"))["provenance"]["evaluation"]
    student, untrained = evaluation["student"], evaluation["untrained_student"]
    gain = student["recall_at_10"] - untrained["recall_at_10"]
    failed = []
    if student["recall_at_10"] < gates.min_recall_at_10:
        failed.append(f"recall@10 {student['recall_at_10']} < {gates.min_recall_at_10}")
    if student["spearman"] < gates.min_spearman:
        failed.append(f"Spearman {student['spearman']} < {gates.min_spearman}")
    if gain < gates.min_recall_gain:
        failed.append(f"recall@10 gain over untrained {gain:.4f} < {gates.min_recall_gain}")
    return dg.AssetCheckResult(
        passed=not failed,
        metadata={
            "failed": failed,
            "recall_at_10": student["recall_at_10"],
            "spearman": student["spearman"],
            "untrained_recall_at_10": untrained["recall_at_10"],
            "untrained_spearman": untrained["spearman"],
            "min_recall_at_10": gates.min_recall_at_10,
            "min_spearman": gates.min_spearman,
            "heldout_documents": evaluation["heldout_documents"],
        },
    )


@dg.asset_check(asset=distilled_model, blocking=True, description="No NaN or inf weight; the stored file reloads and encodes as the training network computes.")
def distilled_model_artifact(context: dg.AssetCheckExecutionContext, storage: Storage) -> dg.AssetCheckResult:
    import torch

    from embedding_assets.engine.distill import StudentModule, csr_batch

    model = LexicalEmbedder.from_bytes(storage.read_bytes(*versions.latest(context, "distilled_model").file(paths.MODEL_FILE)))
    bad_layers = [i for i, w in enumerate(model.layers) if not np.isfinite(w).all()]
    feats = Features.from_bytes(storage.read_bytes(*versions.published(context, "features").file(paths.FEATURES_FILE)))
    sample = read_sample(storage, versions.published(context, "training_sample"), ["text"])
    rows = np.flatnonzero(np.diff(feats.tfidf.indptr) > 0)[:RELOAD_DOCUMENTS]
    encoded = model.encode([sample["text"][int(i)].as_py() for i in rows])
    with torch.no_grad():
        trained = StudentModule(model.layers)(*csr_batch(feats.tfidf[rows], torch.device("cpu"))).numpy()
    difference = float(np.abs(encoded - trained).max()) if len(rows) else 0.0
    return dg.AssetCheckResult(
        passed=not bad_layers and difference < 1e-5,
        metadata={
            "non_finite_layers": bad_layers,
            "documents_compared": len(rows),
            "max_abs_difference": difference,
            "model_version": model.version,
        },
    )
