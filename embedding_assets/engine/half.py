"""A float16 first layer: half the model file, and half the bytes `encode` reads per n-gram.

The first layer is scaled by a power of two so that its largest weight is near float16's
top, and rounded. The scale is exact, and the network is blind to it: a positive factor on
the first layer passes through the ReLU and is removed by the next L2 normalisation. So the
float32 matrix `expand(stored)` and the stored float16 one give the same embeddings; the
first is what the training module and the luxical export see, the second what `encode` reads.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from embedding_assets.engine.errors import ArtifactError

FLOAT16, FLOAT32 = "float16", "float32"
FIRST_LAYER_DTYPES = (FLOAT32, FLOAT16)
_TOP = 2.0**14  # the largest weight lands in [2**14, 2**15), below float16's maximum of 65504


def shrink(layer: np.ndarray) -> np.ndarray:
    """The layer as float16, scaled by a power of two."""
    if not np.all(np.isfinite(layer)):
        raise ArtifactError("the first layer has non-finite weights")
    largest = float(np.abs(layer).max()) if layer.size else 0.0
    exponent = int(np.floor(np.log2(_TOP / largest))) if largest > 0 else 0
    return np.ldexp(layer, exponent).astype(np.float16)


def expand(half: np.ndarray) -> np.ndarray:
    """The float32 values of a float16 layer: what the network computes with."""
    return half.astype(np.float32)


@intrinsic
def as_float32(typingctx, weight):
    """A first-layer weight as float32 in compiled code: float16 (given as its uint16 bits, since
    numba has no float16 type) is widened, float32 passes through.

    LLVM lowers the widening to the CPU's conversion instruction (F16C on x86-64, native on
    ARM64) and vectorises loops of it.
    """
    if weight == types.uint16:

        def widen(context, builder, signature, args):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

        return types.float32(types.uint16), widen
    if weight == types.float32:
        return types.float32(types.float32), lambda context, builder, signature, args: args[0]
    return None
