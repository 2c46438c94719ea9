"""nextterm-mlx: NextTerm-440M, a next-term predictor for integer sequences, on MLX.

    >>> import nextterm_mlx
    >>> p = nextterm_mlx.load("path/to/checkpoint")
    >>> p.predict([1, 1, 2, 3, 5, 8]).value
    13
"""

__version__ = "0.1.0"

from .decode import Prediction
from .errors import UserError
from .predictor import Predictor, load

__all__ = ["Prediction", "Predictor", "UserError", "load", "__version__"]
