"""Model access: backend adapters, the architecture table, and the embedded SmolLM2 loader."""

from .adapters import Adapter, adapt
from .architectures import ARCHITECTURES, Layout, ModelSpec, register_architecture
from .smollm2 import smollm2, smollm2_path

__all__ = ["Adapter", "adapt", "ARCHITECTURES", "Layout", "ModelSpec", "register_architecture", "smollm2", "smollm2_path"]
