"""stablesr: diffusion-prior real-world image super-resolution (StableSR, CCSR, DeeDSR).

Public API only; heavy modules load on first use so `stablesr --help` stays fast.
"""

__version__ = "0.1.0"

_LAZY = {
    "StableSRPipeline": "stablesr.pipelines.stablesr",
    "CCSRPipeline": "stablesr.pipelines.ccsr",
    "DeeDSRPipeline": "stablesr.pipelines.deedsr",
    "DeeDSRSettings": "stablesr.settings_deedsr",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stablesr' has no attribute {name!r}")


__all__ = ["CCSRPipeline", "DeeDSRPipeline", "DeeDSRSettings", "StableSRPipeline", "__version__"]
