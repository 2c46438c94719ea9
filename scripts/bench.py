"""The speed benchmark; the same as `nextterm-mlx bench`.

    python scripts/bench.py [--quick] [--json PATH] [--work DIR] [--oeis PATH]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nextterm_mlx.bench import main  # noqa: E402

main()
