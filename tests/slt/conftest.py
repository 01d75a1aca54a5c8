import pytest
import torch
from torch import nn

from hf_coop.testing import tiny_byte_level_tokenizer, tiny_causal_lm


class TinyConvNet(nn.Module):
    """A Conv2d and two Linear layers (one with a bias) around a non-affine batch norm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.norm = nn.BatchNorm2d(6, affine=False)
        self.hidden = nn.Linear(6 * 16, 20)
        self.head = nn.Linear(20, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(self.conv(x)))
        x = nn.functional.max_pool2d(x, 2).flatten(1)
        return self.head(torch.relu(self.hidden(x)))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; two threads on shared busy cores run about 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def conv_net():
    torch.manual_seed(0)
    return TinyConvNet()


@pytest.fixture
def images():
    return torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def slt_tokenizer():
    return tiny_byte_level_tokenizer()


@pytest.fixture
def gpt2(slt_tokenizer):
    return tiny_causal_lm(slt_tokenizer, arch="gpt2")
