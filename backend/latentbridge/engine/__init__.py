"""Everything torch and diffusers: loading models and turning requests into images.

Public surface (see docs/architecture.md): `Engine`, `StepUpdate`, `GenerationResult`.
"""

from .engine import Engine
from .generate import GenerationResult, StepUpdate

__all__ = ["Engine", "GenerationResult", "StepUpdate"]
