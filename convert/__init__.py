"""HF -> MLX conversion of NextTerm checkpoints, and the transformers reference.

Only `convert.reference` imports torch and transformers, and only when used.
"""

# Before mlx.core is first imported: MLX binds its BLAS at import.
from nextterm_mlx import blas as _blas  # noqa: F401, I001

from .converter import convert_checkpoint  # noqa: E402

__all__ = ["convert_checkpoint"]
