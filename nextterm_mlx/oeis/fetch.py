"""Fetch the OEIS's stripped and names files and build the index from them.

The files go into a temporary folder in the cache and are moved beside the
index only once it is built from them, so an interrupted download leaves
the cache as it was. NEXTTERM_MLX_OEIS_URL points the download at another
copy of oeis.org (a mirror, or the tests' local server).
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from ..errors import UserError
from .build import BuildReport, build_index
from .index import ATTRIBUTION, index_path

OEIS_URL = "https://oeis.org"
FILES = ("stripped.gz", "names.gz")
CHUNK = 1 << 16
TIMEOUT = 60  # seconds without a byte before a download is given up

logger = logging.getLogger(__name__)


def base_url() -> str:
    return (os.environ.get("NEXTTERM_MLX_OEIS_URL") or OEIS_URL).rstrip("/")


def download(cache_dir: Optional[str | Path] = None, progress: bool = True) -> BuildReport:
    """Fetch stripped.gz and names.gz from the OEIS into the cache and build the index from them."""
    target = index_path(cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading the OEIS's stripped and names files from %s. %s", base_url(), ATTRIBUTION)
    folder = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        for name in FILES:
            fetch(f"{base_url()}/{name}", folder / name, progress, target.exists())
        report = build_index(folder / FILES[0], folder / FILES[1], target, base_url())
        for name in FILES:
            os.replace(folder / name, target.parent / name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return report


def fetch(url: str, path: Path, progress: bool, have_index: bool) -> None:
    kept = "the index you have is unchanged" if have_index else "no index was built"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response, path.open("wb") as out:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=path.name, disable=not progress) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise UserError(f"could not fetch {url}: the server answered {e.code} {e.reason}; try again later "
                        f"({kept})") from None
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(f"could not fetch {url}: {reason} (offline?); try again online, or build from files you "
                        f"have with `nextterm-mlx oeis download --from DIR` ({kept})") from None
