"""Models the server has loaded, by (name, arch), loaded on first use and kept (with `--compile`, each
one's dense forward is compiled when it is loaded; compiling happens on its first job).

Loading takes seconds to minutes; nothing else waits for it: `loaded()` and `has()` answer at once
from what is loaded now (the pool's lock is never held during a load), and two requests for the
same model load it once (the second waits on that model's own lock, not on the pool).
"""

from __future__ import annotations

import threading

from engine.models import LoadedModel, load_model


class ModelPool:
    def __init__(self, device: str | None = None, precision: str | None = None, compile: bool = False):
        self.device, self.precision, self.compile = device, precision, compile
        self._models: dict[tuple[str, str | None], LoadedModel] = {}
        self._loading: dict[tuple[str, str | None], threading.Lock] = {}  # one lock per model being loaded
        self._lock = threading.Lock()  # guards the two dicts only: never held while a model loads

    def get(self, name: str, arch: str | None = None) -> LoadedModel:
        key = (name, arch)
        with self._lock:
            if key in self._models:
                return self._models[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                if key in self._models:  # loaded by the request this one waited for
                    return self._models[key]
            model = load_model(name, arch=arch, device=self.device, precision=self.precision)
            if self.compile:
                from engine.dense.forward import compile_dense

                compile_dense(model)
            with self._lock:
                self._models[key] = model
                self._loading.pop(key, None)
            return model

    def has(self, name: str, arch: str | None = None) -> bool:
        with self._lock:
            return (name, arch) in self._models

    def loaded(self) -> list[dict]:
        with self._lock:
            models = list(self._models.values())
        return [{"name": m.name, "arch": m.arch, "device": str(m.device), "dtype": str(m.dtype).replace("torch.", "")}
                for m in models]
