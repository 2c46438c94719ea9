"""HF -> MLX conversion of NextTerm checkpoints, and the transformers reference.

Installed as nextterm_mlx.convert, from the top-level convert/ folder. It
uses the runtime's vocabulary, errors, dtypes and meta, never its API:
the API imports it (to convert on first use), not the other way round.
Only `reference` imports torch and transformers, and only when used.
"""

from .converter import convert_checkpoint

__all__ = ["convert_checkpoint"]
