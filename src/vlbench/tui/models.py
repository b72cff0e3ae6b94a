"""Which models the worker loads: CLI flags over config.toml, the tiny random models when none is set.

Plain strings only: the ModelSpec (whose module imports torch) and the Engine are built by
`build_engine`, which the worker calls on its own thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from vlbench.errors import UserError

TINY_NOTE = "tiny random models — images are noise"


@dataclass(frozen=True)
class ModelChoice:
    zimage: str = ""
    vl: str = ""
    device: str = ""
    dtype: str = ""
    tiny: bool = True

    @classmethod
    def resolve(cls, settings_models, *, tiny: bool = False, zimage: str | None = None, vl: str | None = None,
                device: str | None = None, dtype: str | None = None) -> "ModelChoice":
        if tiny and (zimage or vl):
            raise UserError("--tiny: cannot be combined with --zimage or --vl; drop one")
        zimage = zimage or ("" if tiny else settings_models.zimage)
        vl = vl or ("" if tiny else settings_models.vl)
        return cls(zimage=zimage, vl=vl, device=device or settings_models.device,
                   dtype=dtype or settings_models.dtype, tiny=tiny or (not zimage and not vl))

    def describe(self) -> str:
        if self.tiny:
            return TINY_NOTE
        where = f" on {self.device}" if self.device else ""
        return f"{self.zimage or 'default Z-Image'} + {self.vl or 'default Qwen3-VL'}{where}"

    def spec(self):
        """The ModelSpec of this choice (real models only; the tiny ones are built by build_engine)."""
        from vlbench.modelspec import ModelSpec

        defaults = ModelSpec()
        return ModelSpec(zimage=self.zimage or defaults.zimage, vl=self.vl or defaults.vl, device=self.device or None,
                         dtype=self.dtype or None)

    def build_engine(self, on_status: Callable[[str], None]):
        """Load nothing yet: an Engine whose Models load each part on first use. Worker thread only."""
        from vlbench.engine.engine import Engine
        from vlbench.engine.models import Models
        from vlbench.modelspec import ModelSpec

        _quiet_libraries()
        device, dtype = self.device or None, self.dtype or None
        _leave_a_core_for_the_ui(device)
        if self.tiny:
            from vlbench.engine.tiny import ensure_tiny_models

            on_status("preparing the tiny random models…")
            tiny = ensure_tiny_models()
            spec = ModelSpec(zimage=str(tiny.zimage), vl=str(tiny.vl), device=device, dtype=dtype)
        else:
            defaults = ModelSpec()
            spec = ModelSpec(zimage=self.zimage or defaults.zimage, vl=self.vl or defaults.vl, device=device,
                             dtype=dtype)
        return Engine(Models(spec, on_status=on_status))


def _leave_a_core_for_the_ui(device: str | None) -> None:
    """On the CPU, torch's intra-op threads take every core and keys would wait behind them."""
    import os

    import torch

    on_cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    if on_cpu and (os.cpu_count() or 1) > 1:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) - 1)))


def _quiet_libraries() -> None:
    """Library progress bars and warnings would draw over the workbench; the Queue pane shows progress."""
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
