"""Gates on the student: fidelity floors on held-out documents, finite weights, a file that reloads faithfully."""

import dagster as dg
import numpy as np

from embedding_assets import paths, versions
from embedding_assets.assets.training import distilled_model
from embedding_assets.engine import LexicalEmbedder
from embedding_assets.engine.features import Features
from embedding_assets.checks.reasons import bounds_table, failed_entry
from embedding_assets.resources import QualityGates, Storage
from embedding_assets.stored import model_config, read_sample

RELOAD_DOCUMENTS = 256
RELOAD_TOLERANCE = 1e-5


@dg.asset_check(asset=distilled_model, blocking=True, description="Held-out recall@10 and Spearman against the teacher at or above their floors, and clearly above the untrained network.")
def distilled_model_fidelity(context: dg.AssetCheckExecutionContext, storage: Storage, gates: QualityGates) -> dg.AssetCheckResult:
    evaluation = model_config(storage, versions.latest(context, "distilled_model"))["provenance"]["evaluation"]
    student, untrained = evaluation["student"], evaluation["untrained_student"]
    gain = student["recall_at_10"] - untrained["recall_at_10"]
    bounds = [
        ("held-out recall@10 against the teacher", f"{student['recall_at_10']:.3f}", f">= {gates.min_recall_at_10} (QualityGates.min_recall_at_10)", student["recall_at_10"] >= gates.min_recall_at_10),
        ("held-out Spearman of pairwise cosines", f"{student['spearman']:.3f}", f">= {gates.min_spearman} (QualityGates.min_spearman)", student["spearman"] >= gates.min_spearman),
        (
            "recall@10 gain over the untrained network",
            f"{gain:.3f} ({student['recall_at_10']:.3f} - {untrained['recall_at_10']:.3f})",
            f">= {gates.min_recall_gain} (QualityGates.min_recall_gain)",
            gain >= gates.min_recall_gain,
        ),
    ]
    failed = [f"{measure} {observed} < {bound}" for measure, observed, bound, ok in bounds if not ok]
    return dg.AssetCheckResult(
        passed=not failed,
        metadata={
            **failed_entry(failed),
            "bounds": bounds_table(bounds),
            "recall_at_10": student["recall_at_10"],
            "spearman": student["spearman"],
            "untrained_recall_at_10": untrained["recall_at_10"],
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
    bounds = [
        ("layers with NaN or inf weights", len(bad_layers), "0", not bad_layers),
        (f"largest |stored - trained| over {len(rows)} encoded documents", f"{difference:.2e}", f"< {RELOAD_TOLERANCE:.0e}", difference < RELOAD_TOLERANCE),
    ]
    return dg.AssetCheckResult(
        passed=not bad_layers and difference < RELOAD_TOLERANCE,
        metadata={
            **failed_entry([f"{measure}: {observed}, expected {bound}" for measure, observed, bound, ok in bounds if not ok]),
            "bounds": bounds_table(bounds),
            **({"non_finite_layers": bad_layers} if bad_layers else {}),
            "model_version": model.version,
        },
    )
