"""``--push-to-hub``: opt-in, private unless ``--public``, no pickles; the token is never written,
printed or kept in an error (:func:`redact`)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)

TOKEN_ENV = "HF_TOKEN"
#: Files that may leave the machine. Pickles (``*.bin``, ``*.pt``, ``*.pth``) never do.
ALLOWED_PATTERNS = ("*.safetensors", "*.json", "*.md", "*.txt")
_MASK = "***"
# Anything shaped like a Hugging Face token, even one we were not told about.
_TOKEN_SHAPE = re.compile(r"hf_[A-Za-z0-9]{8,}")


class HubError(RuntimeError):
    """The push failed, or cannot start; the message never contains the token."""


def redact(text: object, token: str | None = None) -> str:
    """``str(text)`` with ``token`` and anything shaped like a Hub token replaced by ``***``."""
    out = str(text)
    if token:
        out = out.replace(token, _MASK)
    return _TOKEN_SHAPE.sub(_MASK, out)


def require_token() -> str:
    """``huggingface_hub.get_token()``, or a :class:`HubError` that says where to put one."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise HubError(f"--push-to-hub needs a Hugging Face token with write access: set the "
                       f"{TOKEN_ENV} environment variable, or on Colab add a secret named "
                       f"{TOKEN_ENV} (key icon) and grant this notebook access. Never paste a "
                       "token into a notebook cell.")  # fmt: skip
    return token


def push_adapter(folder: str | os.PathLike[str], repo_id: str, *, token: str,
                 private: bool = True) -> str:  # fmt: skip
    """Upload the allowed files of the adapter ``folder`` to the model repo ``repo_id`` (created if
    missing) and return its URL; a :class:`HubError` is redacted and unchained."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise HubError(f"{folder} is not a finished adapter folder (no adapter_config.json)")
    failure = None
    try:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          allow_patterns=list(ALLOWED_PATTERNS),
                          commit_message="Upload LoRA adapter trained with phi2kit")  # fmt: skip
    except Exception as err:
        failure = redact(f"push to {repo_id!r} failed: {type(err).__name__}: {err}", token)
    if failure is not None:
        # Raised outside the handler so that the original exception, which may quote the
        # token, is neither chained nor kept as the context of the traceback.
        raise HubError(failure)
    logger.info("pushed %s to %s (%s)", folder, url, "private" if private else "public")
    return str(url)  # create_repo's RepoUrl is the URL as a str
