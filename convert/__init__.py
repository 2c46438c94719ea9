"""HF -> MLX conversion of NextTerm checkpoints, and the transformers reference.

Only `convert.reference` imports torch and transformers, and only when used.
"""

from .converter import convert_checkpoint

__all__ = ["convert_checkpoint"]
