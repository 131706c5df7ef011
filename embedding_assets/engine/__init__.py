"""The lexical-dense embedding engine: plain Python, no orchestration imports.

    from embedding_assets.engine import LexicalEmbedder
    LexicalEmbedder.load("model.safetensors").encode(["some text"])
"""

from embedding_assets.engine.embedder import LexicalEmbedder
from embedding_assets.engine.errors import ArtifactError, InputError

__all__ = ["ArtifactError", "InputError", "LexicalEmbedder"]
