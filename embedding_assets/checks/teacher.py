"""Gates on the teacher embeddings: the same documents as the sample, the right shape, unit and finite vectors."""

import dagster as dg
import numpy as np

from embedding_assets import paths, versions
from embedding_assets.assets.teacher import teacher_embeddings
from embedding_assets.engine.quantization import calibrate_limit, dequantize_uint8, quantize_uint8
from embedding_assets.resources import QualityGates, Storage, Teacher
from embedding_assets.stored import read_embeddings, read_sample


@dg.asset_check(
    asset=teacher_embeddings,
    blocking=True,
    description="Ids and order equal the sample's; dimension as configured; no NaN or inf; norms 1; uint8 round trip within half a bin.",
)
def teacher_embeddings_valid(context: dg.AssetCheckExecutionContext, storage: Storage, teacher: Teacher, gates: QualityGates) -> dg.AssetCheckResult:
    ids, vectors, _ = read_embeddings(storage, *versions.latest(context, "teacher_embeddings").file(paths.TEACHER_EMBEDDINGS_FILE))
    sample_ids = read_sample(storage, versions.published(context, "training_sample"), ["id"])["id"].to_pylist()
    cap = gates.failing_ids_cap
    expected_dim = teacher.embedding_dim()
    finite = np.isfinite(vectors).all(axis=1)
    norms = np.linalg.norm(np.where(np.isfinite(vectors), vectors, 0.0), axis=1)
    off_norm = finite & (np.abs(norms - 1.0) > gates.norm_tolerance)
    values = vectors[finite]
    limit = calibrate_limit(values) if values.size else 1.0
    inside = np.abs(values) <= limit
    error = np.abs(dequantize_uint8(quantize_uint8(values, limit), limit) - values)[inside]
    max_error = float(error.max()) if error.size else 0.0
    clipped = float(1.0 - inside.mean()) if values.size else 0.0
    problems = {
        "ids differ from the training sample": ids != sample_ids,
        f"dimension {vectors.shape[1]} is not {expected_dim}": expected_dim is not None and vectors.shape[1] != expected_dim,
        "NaN or inf values": not finite.all(),
        "norms off 1": bool(off_norm.any()),
        "quantisation error above half a bin": max_error > limit / 255 + 1e-6,
        "too many values clipped by quantisation": clipped > gates.max_clipped_share,
    }
    failed = [name for name, bad in problems.items() if bad]
    missing = sorted(set(sample_ids) - set(ids))[:cap]
    return dg.AssetCheckResult(
        passed=not failed,
        metadata={
            "failed": failed,
            "rows": len(ids),
            "sample_rows": len(sample_ids),
            "missing_ids": missing,
            "dim": int(vectors.shape[1]),
            "expected_dim": expected_dim or "unknown",
            "non_finite_ids": [ids[i] for i in np.flatnonzero(~finite)[:cap]],
            "off_norm_ids": [ids[i] for i in np.flatnonzero(off_norm)[:cap]],
            "max_norm_error": float(np.abs(norms[finite] - 1).max()) if finite.any() else 0.0,
            "quantization_limit": round(limit, 5),
            "max_quantization_error": max_error,
            "clipped_share": clipped,
        },
    )
