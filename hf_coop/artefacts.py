"""The artefact contract every hf_coop artefact follows: how it is saved, found, verified and pushed.

- `atomic_save(folder)`: files are written into a temporary folder next to the target; a manifest with the
  sha256 of every file is written last; then the folder replaces the target by rename. An interrupted save
  leaves the previous artefact as it was (files in the target that the previous manifest did not list, such
  as a Trainer's checkpoints, are carried over; between the two renames of the swap the previous folder
  waits, whole, under a hidden `.<name>.old-*` name).
- `verify_folder(folder)`: every file the manifest lists must be present with its sha256, else `ArtifactError`
  names the file.
- `local_folder(path_or_repo_id)`: the one resolver for "local folder, cached folder or Hub id"; a path that
  can only be local and does not exist is "no such folder".
- `push_folder_to_hub`: the same folder, saved through `atomic_save`'s writer, uploaded as one commit.
- `render_model_card`: model cards from the templates shipped in `hf_coop.model_cards`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from hf_coop.errors import ArtifactError

logger = logging.getLogger(__name__)

MANIFEST_FILE = "hf_coop_manifest.json"
MANIFEST_FORMAT_VERSION = 1


def sha256_file(file: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE
    )


def write_manifest(folder: str | os.PathLike, artefact: str, top_level_only: bool = False) -> None:
    """Write `MANIFEST_FILE`: the artefact's kind and the sha256 of every other file in `folder` (of its
    top-level files only with `top_level_only`, e.g. beside a Trainer's checkpoint folders)."""
    from hf_coop import __version__

    folder = Path(folder)
    names = _files(folder)
    if top_level_only:
        names = [n for n in names if len(Path(n).parts) == 1]
    manifest = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "artefact": artefact,
        "hf_coop_version": __version__,
        "files": {name: sha256_file(folder / name) for name in names},
    }
    (folder / MANIFEST_FILE).write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    file = Path(folder) / MANIFEST_FILE
    if not file.is_file():
        return None
    return read_versioned_json(file, MANIFEST_FORMAT_VERSION)


def read_versioned_json(file: str | os.PathLike, newest_version: int) -> dict[str, Any]:
    """A JSON file hf_coop wrote with a `format_version`; a corrupt file or a newer version is refused, named."""
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{file} is not valid JSON ({e}); the file is corrupt or truncated") from e
    version = data.get("format_version") if isinstance(data, dict) else None
    if not isinstance(version, int) or version > newest_version:
        raise ArtifactError(
            f"{file} has format version {version!r}; this hf_coop reads up to {newest_version}. Upgrade hf_coop: "
            "pip install -U hf-coop"
        )
    return data


def verify_folder(folder: str | os.PathLike, artefact: str | None = None) -> dict[str, Any] | None:
    """Check every file the manifest lists against its sha256 (and the artefact kind, if given); refuse naming
    the first file that is missing or differs. A folder without a manifest (saved by an older hf_coop or by
    hand) is accepted with a warning, since nothing can be verified."""
    manifest = read_manifest(folder)
    if manifest is None:
        logger.warning(
            "%s has no %s: its files cannot be verified (saved by an older hf_coop?)", folder, MANIFEST_FILE
        )
        return None
    if artefact is not None and manifest.get("artefact") != artefact:
        raise ArtifactError(f"{folder} holds a {manifest.get('artefact')}, not a {artefact}")
    for name, expected in manifest["files"].items():
        file = Path(folder) / name
        if not file.is_file():
            raise ArtifactError(f"{file} is missing: the artefact folder is incomplete")
        if sha256_file(file) != expected:
            raise ArtifactError(
                f"{file} does not match its checksum in {MANIFEST_FILE}: it is corrupt or truncated"
            )
    return manifest


@contextlib.contextmanager
def atomic_save(save_directory: str | os.PathLike, artefact: str) -> Iterator[Path]:
    """Yield a temporary folder next to `save_directory` to write an artefact into; on success write the manifest
    and swap the folder in by rename. On any error (or an interruption) the target is left as it was."""
    target = Path(save_directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-", dir=target.parent))
    try:
        yield staging
        write_manifest(staging, artefact)
        if target.exists():
            if not target.is_dir():
                raise ArtifactError(f"{target} is a file; save the artefact to a folder")
            aside = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, aside)
            os.replace(staging, target)
            _carry_over(aside, target)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _carry_over(previous_folder: Path, target: Path) -> None:
    """Move into the new artefact's folder what the previous folder held besides its artefact (e.g. a Trainer's
    checkpoints, a user's notes): entries the previous manifest did not list and the new artefact does not
    write. It runs after the swap, so an interruption leaves them in the hidden previous folder, never lost."""
    previous = read_manifest(previous_folder)
    listed = {Path(name).parts[0] for name in (previous or {}).get("files", {})} | {MANIFEST_FILE}
    for entry in previous_folder.iterdir():
        if entry.name not in listed and not (target / entry.name).exists():
            os.replace(entry, target / entry.name)


def render_model_card(template_name: str, **fields: Any) -> str:
    """Fill a `model_cards/<template_name>` template (`$name` placeholders) shipped with the package."""
    text = resources.files("hf_coop.model_cards").joinpath(template_name).read_text(encoding="utf-8")
    return Template(text).substitute({k: str(v) for k, v in fields.items()})


def push_folder_to_hub(
    save_pretrained: Callable[[str], Any],
    repo_id: str,
    commit_message: str = "Upload with hf_coop",
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
):
    """Save an artefact into a temporary folder with `save_pretrained` and upload that folder as one
    commit, model card included (transformers' `push_to_hub` would replace README.md with a generic card)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(folder)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
        )


@contextlib.contextmanager
def reading_weights(folder: str | os.PathLike):
    """Turn an unreadable safetensors file met while loading `folder` into an `ArtifactError` naming it."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as e:
        names = sorted(p.name for p in Path(folder).glob("*.safetensors")) if os.path.isdir(folder) else []
        raise ArtifactError(
            f"{folder}: a weights file ({', '.join(names) or 'safetensors'}) is unreadable ({e}): it is corrupt or "
            "truncated; save or download it again"
        ) from e


def looks_local(path: str | os.PathLike) -> bool:
    """True for what can only be a local path, never a Hub repo id ("name" or "namespace/name")."""
    text = os.fspath(path)
    return (
        os.path.isabs(text)
        or text.startswith((".", "~"))
        or text.count("/") > 1
        or os.sep in text.replace("/", "")
        or os.path.exists(text)
    )


def local_folder(
    path_or_repo_id: str | os.PathLike,
    revision: str | None = None,
    must_hold: str | None = None,
    **download: Any,
) -> str:
    """The one resolver for artefacts and models: a local folder as is; a Hub repo id downloaded (or taken from
    the cache) as a snapshot (`download`: snapshot_download's cache_dir, token, local_files_only). A path that
    can only be local and is not a folder is refused as "no such folder", never sent to the Hub. With
    `must_hold`, a folder without that file is refused, naming both."""
    text = os.fspath(path_or_repo_id)
    if os.path.isdir(text):
        folder = text
    elif looks_local(text):
        raise ArtifactError(
            f"no such folder: {text}" + (" (it is a file; give its folder)" if os.path.isfile(text) else "")
        )
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError

        try:
            folder = snapshot_download(text, revision=revision, **download)
        except (HFValidationError, OSError) as e:
            raise ArtifactError(
                f"{text} is not a local folder, and as a Hub repo id it could not be fetched ({e}); check the "
                "path, or the repo id and your connection (HF_HUB_OFFLINE=1 allows only cached repos)"
            ) from e
    if must_hold is not None and not os.path.isfile(os.path.join(folder, must_hold)):
        raise ArtifactError(f"{text} has no {must_hold}: it is not a saved artefact of this kind")
    return folder
