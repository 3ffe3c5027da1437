"""Data: one-class splits, context transforms, view pipelines, batch sources."""
from .contexts import BASE_CONTEXTS, ContextSet
from .datasets import DataError, check_data_source, load_split
from .split import OneClassSplit
from .views import TensorViewPipeline, ViewConfig, normalize_only

__all__ = ["BASE_CONTEXTS", "ContextSet", "DataError", "OneClassSplit", "TensorViewPipeline", "ViewConfig",
           "normalize_only", "load_split", "check_data_source"]
