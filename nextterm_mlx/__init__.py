"""nextterm-mlx: NextTerm-440M, a next-term predictor for integer sequences, on MLX.

    >>> import nextterm_mlx
    >>> p = nextterm_mlx.load("path/to/checkpoint")
    >>> p.predict([1, 1, 2, 3, 5, 8]).value
    13
"""

__version__ = "0.1.0"

# Before anything imports mlx.core: it binds its BLAS at import.
from . import blas as _blas  # noqa: E402,F401
from .decode import Prediction, StopReason  # noqa: E402
from .errors import UserError  # noqa: E402
from .predictor import Predictor, load  # noqa: E402

__all__ = ["Prediction", "Predictor", "StopReason", "UserError", "load", "__version__"]
