"""Shared logic for the generative-feedback-loop course notebooks.

Notebooks tell the story and call into these small modules; each module holds one idea
(settings, the Milvus server lifecycle, data loading, embeddings, schema, generators...).
"""

from helpers.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]
