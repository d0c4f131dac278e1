"""FarSLIP models: release registry, checkpoint files, the network, device choice, loading.

`load_model`, `wrap_model` and `LoadedModel` are imported lazily so that light commands
(`farslip models list`) do not pay for importing torch and open_clip.
"""

__all__ = ["LoadedModel", "load_model", "wrap_model"]


def __getattr__(name: str):
    if name in __all__:
        from engine.models import loader

        return getattr(loader, name)
    raise AttributeError(name)
