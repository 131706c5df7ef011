"""The scoring path is light: encoding and loading the definitions leave torch, scikit-learn and
great-expectations unloaded; a model file is mapped into memory, not read into it."""

import json
import mmap
import subprocess
import sys

import numpy as np
import pytest

from embedding_assets.engine import ArtifactError, LexicalEmbedder
from embedding_assets.engine.features import build_features
from embedding_assets.engine.network import init_layers

HEAVY = ["torch", "sklearn", "great_expectations", "sentence_transformers", "transformers"]


def loaded_modules(script: str, *args: str) -> list[str]:
    """The heavy modules in sys.modules after `script` ran in a fresh interpreter."""
    probe = f"{script}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def model_file(tokenizer_json, sample_texts, tmp_path_factory):
    texts = sample_texts[:400]
    feats = build_features(tokenizer_json, [str(i) for i in range(len(texts))], [texts], 5_000, 3, 2, 100_000)
    model = LexicalEmbedder(tokenizer_json, feats.vocabulary, init_layers([feats.vocabulary.size, 32, 16], 0),
                            np.full(16, 0.25, np.float32), 0.5, {"note": "test"}, first_layer_dtype="float16")
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    model.save(path)
    return path, model


def test_encode_path_imports_no_torch_sklearn_or_great_expectations(model_file):
    path, model = model_file
    script = (
        "import sys, numpy as np\n"
        "from embedding_assets.engine import LexicalEmbedder\n"
        "vectors = LexicalEmbedder.load(sys.argv[1]).encode(['socket.send sends bytes', ''])\n"
        "assert vectors.shape == (2, 16) and np.allclose(np.linalg.norm(vectors, axis=1), 1)"
    )
    assert loaded_modules(script, str(path)) == []
    # The probe sees the modules when they are there: the training side loads torch.
    assert "torch" in loaded_modules("import embedding_assets.engine.training")


def test_loading_the_definitions_imports_no_heavy_library_at_module_level():
    assert loaded_modules("import embedding_assets.definitions") == []


def test_a_local_model_is_memory_mapped_and_encodes_as_the_original(model_file, sample_texts):
    path, model = model_file
    loaded = LexicalEmbedder.load(path)
    base = loaded._first_layer
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    assert isinstance(base, mmap.mmap), "the first layer should be a view into the mapped file"
    assert loaded.version == model.version
    assert np.array_equal(loaded.encode(sample_texts[:50]), model.encode(sample_texts[:50]))


def test_a_mapped_file_that_is_tampered_or_misshapen_is_refused_by_name(model_file, tmp_path):
    path, model = model_file
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "tampered.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="tampered.safetensors: content hash does not match"):
        LexicalEmbedder.load(tmp_path / "tampered.safetensors")

    from embedding_assets.engine import artifact

    tensors = model._tensors()
    tensors["layers.1"] = np.zeros((5, 16), np.float32)
    (tmp_path / "shape.safetensors").write_bytes(artifact.dump(model._config(), tensors))
    with pytest.raises(ArtifactError, match="shape.safetensors: tensor 'layers.1' has shape"):
        LexicalEmbedder.load(tmp_path / "shape.safetensors")

    (tmp_path / "truncated.safetensors").write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="truncated.safetensors: tensors are unreadable"):
        LexicalEmbedder.load(tmp_path / "truncated.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ArtifactError, match="not a safetensors file"):
        LexicalEmbedder.load(tmp_path / "empty.safetensors")
    with pytest.raises(ArtifactError, match="no model file"):
        LexicalEmbedder.load(tmp_path / "absent.safetensors")
