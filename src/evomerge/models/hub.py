"""Publishing a saved model to the Hugging Face hub (``evomerge export --push-to-hub``).

huggingface_hub does the work; this only checks that the folder is a complete export
(weights, config, model card) before anything is uploaded, and says what to do when
the hub refuses (no token, no network).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import EvomergeError

#: What a folder must hold to be worth publishing: weights, the config, the model card.
REQUIRED = ("config.json", "README.md")


class HubError(EvomergeError):
    """The hub refused an upload, or the folder is not a finished export."""


def push_to_hub(folder: Path | str, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Upload an exported model folder to ``repo_id`` (created if absent); return its URL.

    The token comes from ``token``, else ``$HF_TOKEN`` or ``huggingface-cli login``."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    missing = [name for name in REQUIRED if not (folder / name).exists()]
    if not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise HubError(f"{folder} is not a finished export (missing {', '.join(missing)}); nothing was uploaded")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            commit_message="Upload a merge evolved with evomerge",
        )
    except Exception as err:  # the hub client raises many types (HTTP, auth, network); all mean "not uploaded"
        raise HubError(
            f"could not push {folder} to {repo_id}: {err}. The export is kept in {folder}; log in with "
            "`huggingface-cli login` (or set HF_TOKEN) and push again with `evomerge export ... --push-to-hub`, "
            "or upload that folder yourself."
        ) from err
    return str(url)
