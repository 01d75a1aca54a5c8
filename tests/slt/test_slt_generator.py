"""The portable generator is the file format: its outputs are pinned by literal golden vectors."""

import hashlib

import numpy as np
import pytest

from hf_coop.slt import FrozenSLTConfig, generator
from hf_coop.slt.layer import regenerate_weight

MASK64 = (1 << 64) - 1


def reference_bits(seed: int, name: str, stream: int, count: int) -> list[int]:
    """The generator as written in `hf_coop.slt.generator`'s docstring, in plain Python integers."""

    def mix(z: int) -> int:
        z ^= z >> 30
        z = (z * 0xBF58476D1CE4E5B9) & MASK64
        z ^= z >> 27
        z = (z * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    name_hash = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")
    key = mix(mix(seed & MASK64) ^ name_hash ^ ((stream * generator.GAMMA) & MASK64))
    return [mix((key + (i + 1) * generator.GAMMA) & MASK64) for i in range(count)]


def test_golden_bits():
    assert [hex(int(b)) for b in generator.random_bits(0, "layer", generator.WEIGHT_STREAM, 4)] == [
        "0x152b6efeef7180f2",
        "0xfbeaafb2f62ccd64",
        "0xfcae573f528b2bd7",
        "0xeaae0aa05b0c710a",
    ]
    assert [hex(int(b)) for b in generator.random_bits(2024, "transformer.h.0.mlp.c_fc", 2, 3)] == [
        "0x4993969f0c2d3ef",
        "0x6c79b42fcd9854a3",
        "0x1ee3d3c8eb44e576",
    ]


def test_mix64_is_splitmix64():
    # First output of the reference SplitMix64 seeded with 0.
    assert int(generator.mix64(np.array([generator.GAMMA], dtype=np.uint64))[0]) == 0xE220A8397B1DCDAF


@pytest.mark.parametrize("seed,name,stream", [(0, "layer", 1), (2**63 + 5, "é.名前", 3), (-1, "fc", 2)])
def test_bits_follow_the_documented_spec(seed, name, stream):
    assert generator.random_bits(seed, name, stream, 50).tolist() == reference_bits(seed, name, stream, 50)


def test_golden_uniform_signs_and_codes():
    assert generator.uniform(1, "features.0", 1, 3).tolist() == [
        0.8340249661102329,
        0.6515801604986241,
        0.27219652098546887,
    ]
    assert generator.signs(1, "features.0", 1, 8).tolist() == [-1, -1, 1, 1, 1, -1, -1, -1]
    assert generator.freeze_codes(3, "classifier.1", 12, 4, 3).tolist() == [
        1,
        0,
        2,
        0,
        0,
        1,
        0,
        2,
        0,
        1,
        2,
        1,
    ]


def test_golden_weights():
    assert regenerate_weight(FrozenSLTConfig(seed=1), "fc", 4, 2).tolist() == [1.0, -1.0, -1.0, -1.0]
    uniform = regenerate_weight(FrozenSLTConfig(seed=1, weight_init="kaiming_uniform"), "fc", 3, 2)
    assert uniform.tolist() == [-0.19970840215682983, 1.337371826171875, 0.10047141462564468]


def test_streams_and_names_are_independent():
    a = generator.random_bits(0, "a", 1, 100)
    assert not np.array_equal(a, generator.random_bits(0, "b", 1, 100))
    assert not np.array_equal(a, generator.random_bits(0, "a", 2, 100))
    assert not np.array_equal(a, generator.random_bits(1, "a", 1, 100))
    # A prefix of a longer stream is the shorter stream (counter-based, no hidden state).
    assert np.array_equal(generator.random_bits(0, "a", 1, 10), a[:10])


def test_freeze_codes_exact_counts():
    codes = generator.freeze_codes(0, "x", 1001, 333, 250)
    assert (codes == generator.PRUNED).sum() == 333
    assert (codes == generator.LOCKED).sum() == 250
    assert (codes == generator.FREE).sum() == 1001 - 583
    with pytest.raises(ValueError, match="cannot freeze"):
        generator.freeze_codes(0, "x", 10, 6, 5)
