"""Gates on the teacher embeddings: the same documents as the sample, the right shape, unit and finite vectors."""

import dagster as dg
import numpy as np

from embedding_assets import paths, versions
from embedding_assets.assets.teacher import teacher_embeddings
from embedding_assets.engine.quantization import calibrate_limit, dequantize_uint8, quantize_uint8
from embedding_assets.checks.reasons import bounds_table, failed_entry
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
    half_bin = limit / 255
    dim_ok = expected_dim is None or vectors.shape[1] == expected_dim
    bounds = [
        ("rows in the sample's order", len(ids), f"= the training sample's {len(sample_ids):,} ids, same order", ids == sample_ids),
        ("dimension", int(vectors.shape[1]), f"= {expected_dim} (the teacher's)" if expected_dim else "any (teacher dimension unknown)", dim_ok),
        ("vectors with NaN or inf", int((~finite).sum()), "0", bool(finite.all())),
        ("largest |norm - 1|", f"{float(np.abs(norms[finite] - 1).max()) if finite.any() else 0.0:.2e}", f"<= {gates.norm_tolerance} (QualityGates.norm_tolerance)", not off_norm.any()),
        ("largest uint8 round-trip error", f"{max_error:.2e}", f"<= half a bin, {half_bin:.2e} (quantisation limit {limit:.4f} / 255)", max_error <= half_bin + 1e-6),
        ("share of values clipped by quantisation", f"{clipped:.2e}", f"<= {gates.max_clipped_share} (QualityGates.max_clipped_share)", clipped <= gates.max_clipped_share),
    ]
    failed = [f"{measure}: {observed}, expected {bound}" for measure, observed, bound, ok in bounds if not ok]
    missing = sorted(set(sample_ids) - set(ids))[:cap]
    offenders = {
        "missing_ids": missing,
        "non_finite_ids": [ids[i] for i in np.flatnonzero(~finite)[:cap]],
        "off_norm_ids": [ids[i] for i in np.flatnonzero(off_norm)[:cap]],
    }
    return dg.AssetCheckResult(
        passed=not failed,
        metadata={
            **failed_entry(failed),
            "bounds": bounds_table(bounds),
            "rows": len(ids),
            "dim": int(vectors.shape[1]),
            **{key: value for key, value in offenders.items() if value},
            "quantization_limit": round(limit, 5),
        },
    )
