"""The vector index over tile features (FAISS): choice by pool size, build, persist, search."""
from .faiss_index import IndexOptions, VectorIndex, build_index  # noqa: F401
