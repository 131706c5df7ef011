"""Resources: where data comes from and goes to, what computes, and the teacher."""

from embedding_assets.resources.compute import Compute
from embedding_assets.resources.corpus import CorpusSource
from embedding_assets.resources.curation import Curation
from embedding_assets.resources.gates import QualityGates
from embedding_assets.resources.s3 import S3Settings
from embedding_assets.resources.storage import Storage, StorageError
from embedding_assets.resources.teacher import Teacher

__all__ = ["Compute", "CorpusSource", "Curation", "QualityGates", "S3Settings", "Storage", "StorageError", "Teacher"]
