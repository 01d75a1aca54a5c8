import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
