"""Hugging Face Hub model IDs as model paths: ``Qwen/Qwen2.5-0.5B-Instruct`` or ``org/name@revision``.

A model path that is not an existing file or folder and looks like a Hub ID is resolved through huggingface_hub's
``snapshot_download`` into the standard cache (``HF_HOME`` / ``HF_HUB_CACHE``), fetching only what esjax reads:
``config.json``, ``generation_config.json``, the safetensors weights and their index, and the tokenizer files. The
environment is honoured as transformers honours it: ``HF_HUB_OFFLINE=1`` uses the cache only, ``HF_TOKEN`` (or a
stored login) authenticates gated models. A model already in the cache loads with the network off.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from esjax.common.errors import EsjaxError
from esjax.models.hf import INDEX_FILE, TOKENIZER_FILES

HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<revision>[\w./-]{1,255}))?")
MODEL_FILES = ("config.json", "generation_config.json", "*.safetensors", INDEX_FILE, *TOKENIZER_FILES)


class ModelNotFoundError(EsjaxError, FileNotFoundError):
    """A model path that is neither a local file or folder nor a Hub ID that could be fetched or found cached."""


def parse_hub_id(path: str | os.PathLike) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``path`` is a Hub model ID and not an existing local path, else None."""
    text = os.fspath(path)
    if Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or ".." in text:
        return None
    match = HUB_ID.fullmatch(text)
    return (match["repo"], match["revision"]) if match else None


def resolve_model_path(path: str | os.PathLike) -> Path:
    """A local model folder for ``path``: an existing path as it is (``~`` expanded), a Hub ID through the cache.

    Raises :class:`ModelNotFoundError` (one line) for a missing local path, or a Hub ID that is not cached and
    cannot be fetched (offline, unknown, gated without a token).
    """
    hub = parse_hub_id(path)
    if hub is None:
        local = Path(os.fspath(path)).expanduser()
        if not local.exists():
            raise ModelNotFoundError(f"{path}: no such model folder or checkpoint (nor a Hub model ID "
                                     f"such as Qwen/Qwen2.5-0.5B-Instruct)")
        return local
    return download(*hub)


def download(repo_id: str, revision: str | None = None) -> Path:
    """The cached snapshot folder of ``repo_id`` at ``revision`` (default branch when None), fetched if needed."""
    import huggingface_hub
    from huggingface_hub import constants, errors

    offline = constants.HF_HUB_OFFLINE
    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        folder = huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=list(MODEL_FILES),
                                                   local_files_only=offline)
    except (errors.RepositoryNotFoundError, errors.GatedRepoError) as e:  # before HfHubHTTPError (subclasses)
        raise ModelNotFoundError(f"{where}: not found on the Hugging Face Hub or not accessible with your token "
                                 f"({type(e).__name__}); log in with `hf auth login` or set HF_TOKEN for a gated "
                                 f"model") from None
    except errors.RevisionNotFoundError:
        raise ModelNotFoundError(f"{where}: the Hub has no revision {revision!r} of {repo_id}") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, errors.HfHubHTTPError, OSError) as e:
        why = "HF_HUB_OFFLINE is set" if offline else f"the Hub could not be reached ({type(e).__name__})"
        raise ModelNotFoundError(f"{where}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}; "
                                 f"download it where the network is available (`hf download {repo_id}`) or "
                                 f"pass a local folder") from None
    return Path(folder)
