"""Model files from the Hugging Face Hub, downloaded once into its cache, with every way that can
fail turned into one line saying which model, where to accept its terms and how to use local
weights instead."""
from __future__ import annotations

from pathlib import Path

from engine.encoder_registry import EncoderError

def download(repo_id: str, revision: str | None = None, token: str | None = None, local: str = "{model} DIR",
             allow_patterns: list[str] | None = None, name: str | None = None) -> Path:
    """The repo's snapshot folder (`snapshots/<commit>`), with the user's token (`token`, else
    HF_TOKEN or the cached login). `local`: how the command takes local weights instead, for the
    hints; `allow_patterns`: only these files; `name`: what the user called the model."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    page = f"https://huggingface.co/{repo_id}"
    what = f"{name} ({repo_id})" if name and name != repo_id else repo_id
    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision, token=token, allow_patterns=allow_patterns))
    except GatedRepoError as e:
        raise EncoderError(f"{what} is gated: accept its terms on {page} while logged in, then set HF_TOKEN "
                            "(or run `hf auth login`)", f"or pass {local} with a downloaded copy") from e
    except RepositoryNotFoundError as e:
        raise EncoderError(f"{what}: not found on the Hugging Face Hub, or not visible without a token",
                            f"check the id, set HF_TOKEN after accepting the terms on {page}, or pass {local}") from e
    except RevisionNotFoundError as e:
        raise EncoderError(f"{what}: no revision {revision!r}", "leave out {revision} or name an existing one") from e
    except LocalEntryNotFoundError as e:
        raise EncoderError(f"{what}: cannot reach the Hugging Face Hub and the model is not in the local cache",
                            f"download it where there is network (accept the terms on {page}, set HF_TOKEN) "
                            f"and pass {local}, or run this online once") from e
    except OSError as e:  # connection errors and other I/O failures the hub client surfaces
        raise EncoderError(f"{what}: download failed ({e})", f"pass {local} with a downloaded copy") from e
