"""The OEIS, offline: a local index of its stripped and names files.

    from nextterm_mlx import oeis

    index = oeis.open_index()              # None until `nextterm-mlx oeis download`
    matches = index.search([1, 1, 2, 3, 5, 8], limit=3)

Needs no model. Every answer that shows the OEIS's data must carry
ATTRIBUTION: the OEIS is CC BY-SA 4.0.
"""

from .build import BuildReport, build_index
from .fetch import download
from .index import ATTRIBUTION, Index, Match, index_path, open_index, require_index
from .transforms import Transform

__all__ = ["ATTRIBUTION", "BuildReport", "Index", "Match", "Transform", "build_index", "download", "index_path",
           "open_index", "require_index"]
