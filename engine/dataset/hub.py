"""Uploading an export to a Hugging Face Hub dataset."""
from __future__ import annotations

from pathlib import Path

from engine.dataset.schema import DatasetError


def push_to_hub(out_dir, repo_id: str, token: str | None = None) -> str:
    """Upload an export (card and parquet files, replacing the repo's earlier ones) to the Hub
    dataset `repo_id`, made if needed; returns its URL."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import HfApi

    out_dir = Path(out_dir)
    if not (out_dir / "README.md").is_file() or not any((out_dir / "data").glob("train-*.parquet")):
        raise DatasetError(f"{out_dir}: no export there; run python -m engine.dataset export --out {out_dir} first")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
        api.upload_folder(folder_path=out_dir, repo_id=repo_id, repo_type="dataset",
                          allow_patterns=["README.md", "data/*.parquet"],
                          delete_patterns=["data/*.parquet"], commit_message="histogen export")
    # Offline mode, refused connections, HTTP errors (unauthorised, not found) and a missing token are
    # OSErrors or httpx2 errors; a malformed repo id is a ValueError.
    except (OSError, ValueError, httpx2.HTTPError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(f"cannot push {out_dir} to the Hub dataset {repo_id}: {reason}",
                           "check the network and your token (hf auth login, or HF_TOKEN)") from e
    return str(url)
