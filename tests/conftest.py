import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the vocabulary engine's table cache: a fresh folder per run, so tests never read a stale user cache
os.environ["HF_COOP_TABLES"] = tempfile.mkdtemp(prefix="hf_coop_tables_")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def byte_level_tokenizer():
    from hf_coop.testing import tiny_byte_level_tokenizer

    return tiny_byte_level_tokenizer()


@pytest.fixture(scope="session")
def sentencepiece_tokenizer():
    from hf_coop.testing import tiny_sentencepiece_tokenizer

    return tiny_sentencepiece_tokenizer()


@pytest.fixture
def mock_hub(monkeypatch):
    """Stand-in for the Hub: `create_repo` answers locally and `upload_folder` records the uploaded files
    (relative path -> bytes, plus "repo_id"), so push_to_hub is tested without the network."""
    from pathlib import Path

    import huggingface_hub

    uploaded = {}

    def create_repo(self, repo_id, **kwargs):
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        uploaded.update(
            {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        )
        uploaded["repo_id"] = repo_id

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return uploaded
