"""con2: Con2 (aligned representation pairs) self-supervised image anomaly detection."""
__version__ = "0.2.0"


def __getattr__(name):
    # lazy, so `import con2` stays light and cannot fail on an optional part
    if name == "Con2Detector":
        from .detector import Con2Detector

        return Con2Detector
    raise AttributeError(f"module 'con2' has no attribute {name!r}")


__all__ = ["__version__", "Con2Detector"]


def __dir__():
    return sorted(set(globals()) | set(__all__))  # Con2Detector too, for completion and help()
