"""The published NextTerm-440M checkpoints on the Hugging Face hub, by name.

Only the chosen checkpoint's subfolder is downloaded, with huggingface_hub
into the standard HF cache (HF_HOME and HF_HUB_OFFLINE respected).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import UserError

DEFAULT_REPO = "N8Programs/NextTerm-440M-Checkpoints"
DEFAULT_CHECKPOINT = "final_latest"


@dataclass(frozen=True)
class PublishedCheckpoint:
    name: str
    tokens_trained: int
    eval_neo_accuracy: Optional[float]  # OEIS Eval Neo, 19,034 sequences, from the model card


# From the model card of N8Programs/NextTerm-440M-Checkpoints.
PUBLISHED = (
    PublishedCheckpoint("final_latest", 13_999_999_995, 6545 / 19034),
    PublishedCheckpoint("best_val", 9_500_200_875, 6477 / 19034),
    PublishedCheckpoint("checkpoint_tokens_012000258345", 12_000_258_345, None),
    PublishedCheckpoint("checkpoint_tokens_012500265837", 12_500_265_837, None),
    PublishedCheckpoint("checkpoint_tokens_013000266889", 13_000_266_889, None),
    PublishedCheckpoint("checkpoint_tokens_013500289737", 13_500_289_737, None),
)


def checkpoint_name(name: str, repo: str = DEFAULT_REPO) -> Optional[str]:
    """The published folder `name` means ("best_val", or a token count with
    or without leading zeros), or None when it names none of them. Another
    repo's checkpoints are taken by their folder name as given."""
    if repo != DEFAULT_REPO:
        return name
    if re.fullmatch(r"[0-9]+", name):
        name = f"checkpoint_tokens_{int(name):012d}"
    return name if any(c.name == name for c in PUBLISHED) else None


def subfolder_for(name: str) -> str:
    return name if "/" in name else f"checkpoints/{name}"


def download_checkpoint(repo: str, subfolder: str, revision: Optional[str]) -> tuple[Path, str]:
    """The local folder of `subfolder` in `repo` and the commit it came from,
    downloading only that subfolder unless the HF cache already has it."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo}/{subfolder}" + (f" at revision {revision}" if revision else "")
    try:
        snapshot = Path(snapshot_download(repo, revision=revision, allow_patterns=[f"{subfolder}/*"]))
    except LocalEntryNotFoundError:
        raise UserError(not_cached(where)) from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise UserError(f"could not fetch {where}: no such repo on the hub (or it is private); check --repo") from None
    except RevisionNotFoundError:
        raise UserError(f"could not fetch {where}: the repo has no revision {revision!r}; check --revision") from None
    except HFValidationError:
        raise UserError(f"{repo!r} is not a hub repo id; give it as ORG/NAME, e.g. {DEFAULT_REPO}") from None
    except (HfHubHTTPError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"could not fetch {where}: {reason}; try again, or give --model PATH") from None
    folder = snapshot / subfolder
    if not (folder / "config.json").exists():
        if constants.HF_HUB_OFFLINE:  # the snapshot exists, but this subfolder was never fetched
            raise UserError(not_cached(where))
        raise UserError(
            f"{repo} has no checkpoint {subfolder!r} at revision {snapshot.name[:12]}; "
            "`nextterm-mlx checkpoints` lists the published ones"
        )
    return folder, snapshot.name


def not_cached(where: str) -> str:
    return (
        f"could not fetch {where}: the hub is unreachable (or HF_HUB_OFFLINE=1) and it is not in "
        "the HF cache; run once online, or give --model PATH to a local checkpoint folder"
    )
