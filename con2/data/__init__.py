"""Data: one-class splits, context transforms, view pipelines, batch sources."""
from .contexts import BASE_CONTEXTS, ContextSet
from .split import OneClassSplit
from .views import TensorViewPipeline, ViewConfig, normalize_only


def load_split(cfg):
    """The one-class split named by a TrainConfig (dataset, normal_class, data_root, ...)."""
    from .datasets import load_split as _load

    return _load(cfg)


__all__ = ["BASE_CONTEXTS", "ContextSet", "OneClassSplit", "TensorViewPipeline", "ViewConfig",
           "normalize_only", "load_split"]
