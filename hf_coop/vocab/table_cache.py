"""Build artefacts of the vocabulary engine, cached on disk and keyed by fingerprints of the tokenizers.

Nested tables (with their tries and token bytes) and maximal common vocabularies depend only on tokenizers,
yet take seconds to build for a 262k-token tokenizer. They are saved once under `$HF_COOP_TABLES` (default
`~/.cache/hf_coop/tables`, beside the converted demo models) as safetensors + JSON, written to a temporary folder and renamed into
place, and reloaded in a fraction of a second; a file that fails to load is rebuilt. `HF_COOP_TABLE_CACHE=0`
turns the disk cache off. Within a process every artefact is also kept in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from safetensors.torch import load_file, save_file

from hf_coop.config_utils import fingerprint

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
T = TypeVar("T")
_memory: dict[str, object] = {}
_tokenizer_fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tables_dir() -> Path:
    """`$HF_COOP_TABLES`, else `tables` beside the converted models (`$HF_COOP_CACHE`, `~/.cache/hf_coop`)."""
    from hf_coop.models import cache_dir

    return Path(os.environ.get("HF_COOP_TABLES") or cache_dir().parent / "tables")


def tokenizer_fingerprint(tokenizer) -> str:
    """Identifies everything the tables depend on: the tokenizer's full serialisation (vocabulary, merges,
    normalizer, pre-tokenizer, added tokens) and its special tokens."""
    size = len(tokenizer)
    known = _tokenizer_fingerprints.get(tokenizer)
    if known is not None and known[0] == size:
        return known[1]
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8"))
    digest.update(json.dumps([size, tokenizer.all_special_ids, tokenizer.all_special_tokens]).encode("utf-8"))
    value = digest.hexdigest()[:16]
    _tokenizer_fingerprints[tokenizer] = (size, value)
    return value


def pack_bytes(strings: list[bytes | None]) -> dict[str, torch.Tensor]:
    """Byte strings (None allowed) as one uint8 blob, end offsets and a None mask."""
    blob = b"".join(s or b"" for s in strings)
    ends = torch.tensor([len(s or b"") for s in strings], dtype=torch.long).cumsum(0)
    return {
        "blob": torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        if blob
        else torch.zeros(0, dtype=torch.uint8),
        "ends": ends,
        "none": torch.tensor([s is None for s in strings], dtype=torch.bool),
    }


def unpack_bytes(arrays: dict[str, torch.Tensor]) -> list[bytes | None]:
    blob = arrays["blob"].numpy().tobytes()
    ends = arrays["ends"].tolist()
    starts = [0, *ends[:-1]]
    return [None if none else blob[a:b] for a, b, none in zip(starts, ends, arrays["none"].tolist())]


def cached(
    kind: str,
    key: dict,
    build: Callable[[], T],
    to_arrays: Callable[[T], tuple[dict[str, torch.Tensor], dict]],
    from_arrays: Callable[[dict[str, torch.Tensor], dict], T],
) -> T:
    """`build()`'s result for `key`, from memory, from the disk cache, or built (and then saved)."""
    name = f"{kind}-{fingerprint({'kind': kind, 'format': FORMAT_VERSION, **key})}"
    if name in _memory:
        return _memory[name]
    folder = tables_dir() / name
    use_disk = os.environ.get("HF_COOP_TABLE_CACHE", "1") != "0"
    value = None
    if use_disk and (folder / "meta.json").is_file():
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            value = from_arrays(load_file(str(folder / "arrays.safetensors")), meta)
        except Exception as e:  # a corrupt or partial cache entry is rebuilt, never trusted
            logger.warning("rebuilding the cached %s in %s (%s)", kind, folder, e)
    if value is None:
        value = build()
        if use_disk:
            _save(folder, *to_arrays(value))
    _memory[name] = value
    return value


def _save(folder: Path, arrays: dict[str, torch.Tensor], meta: dict) -> None:
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
        save_file({k: v.contiguous() for k, v in arrays.items()}, str(staging / "arrays.safetensors"))
        (staging / "meta.json").write_text(json.dumps(meta), encoding="utf-8")  # last: marks it complete
        try:
            os.replace(staging, folder)
        except OSError:  # another process saved it first
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as e:
        logger.warning("could not cache tables in %s (%s); they will be rebuilt next time", folder, e)
