"""Models the server has loaded, by (name, arch), loaded on first use and kept (with `--compile`, each
one's dense forward is compiled when it is loaded; compiling happens on its first job)."""

from __future__ import annotations

import threading

from engine.models import LoadedModel, load_model


class ModelPool:
    def __init__(self, device: str | None = None, precision: str | None = None, compile: bool = False):
        self.device, self.precision, self.compile = device, precision, compile
        self._models: dict[tuple[str, str | None], LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, name: str, arch: str | None = None) -> LoadedModel:
        key = (name, arch)
        with self._lock:
            if key not in self._models:
                model = load_model(name, arch=arch, device=self.device, precision=self.precision)
                if self.compile:
                    from engine.dense.forward import compile_dense

                    compile_dense(model)
                self._models[key] = model
            return self._models[key]

    def has(self, name: str, arch: str | None = None) -> bool:
        with self._lock:
            return (name, arch) in self._models

    def loaded(self) -> list[dict]:
        with self._lock:
            return [{"name": m.name, "arch": m.arch, "device": str(m.device), "dtype": str(m.dtype).replace("torch.", "")}
                    for m in self._models.values()]
