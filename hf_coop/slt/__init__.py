"""Strong lottery tickets in partially frozen random networks (arXiv 2402.14029).

`apply_frozen_slt(model, FrozenSLTConfig(...))` turns a model's Linear, Conv2d and GPT-2 Conv1D layers into
supermask layers over frozen random weights regenerated from a seed; training moves only the scores; a
ticket is saved as the config, one bit per free weight and the declared dense extras.
"""

from .callback import FrozenSLTCallback
from .config import FrozenSLTConfig
from .layer import SupermaskConv1D, SupermaskConv2d, SupermaskLayer, SupermaskLinear
from .model import FrozenSLTModel, apply_frozen_slt, inspect_checkpoint

__all__ = [
    "FrozenSLTCallback",
    "FrozenSLTConfig",
    "FrozenSLTModel",
    "SupermaskConv1D",
    "SupermaskConv2d",
    "SupermaskLayer",
    "SupermaskLinear",
    "apply_frozen_slt",
    "inspect_checkpoint",
]
