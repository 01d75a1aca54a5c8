"""The portable random generator of hf_coop.slt: this docstring is the file format's definition.

A compact SLT checkpoint stores a seed instead of weights (as peft's VeRA stores a seed instead of its
projections), so the random weights, freeze codes and initial scores must come out identical on every
machine, torch/numpy version and device. torch's and numpy's own streams promise no such thing, so every
random value is a pure function of integers, computed with 64-bit unsigned wrap-around arithmetic:

    mix64(z)  = SplitMix64 finaliser:   z ^= z >> 30; z *= 0xBF58476D1CE4E5B9
                                        z ^= z >> 27; z *= 0x94D049BB133111EB
                                        z ^= z >> 31                            (all mod 2**64)
    GAMMA     = 0x9E3779B97F4A7C15
    name_hash = first 8 bytes of sha256(layer_name as UTF-8), read little-endian
    key       = mix64(mix64(seed mod 2**64) ^ name_hash ^ (stream * GAMMA mod 2**64))
    bits[i]   = mix64(key + (i + 1) * GAMMA mod 2**64)                           (i = 0, 1, 2, ...)

`layer_name` is the module's qualified name in the model (`transformer.h.0.mlp.c_fc`), `i` the row-major
flat index of the element in the layer's own weight layout (GPT-2 `Conv1D` stores `(in, out)`), and
`stream` one of `WEIGHT_STREAM` (1), `FREEZE_STREAM` (2) and `SCORE_STREAM` (3). From the bits:

- uniform float in [0, 1):  (bits >> 11) * 2**-53, exact in float64;
- signed constant:          +1 when the top bit (bits >> 63) is 0, else -1;
- frozen positions:         elements sorted by (bits, i) ascending on the freeze stream; the first
                            `n_pruned` are pruned, the next `n_locked` locked, the rest free.

Weights are computed in float64 from these values and rounded once to float32 (IEEE round-to-nearest), so
they are reproducible bit for bit; checkpoints also carry their sha256 to catch any drift.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..errors import ConfigError

GAMMA = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1
WEIGHT_STREAM = 1
FREEZE_STREAM = 2
SCORE_STREAM = 3

FREE, PRUNED, LOCKED = 0, 1, 2


def mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrap-around arithmetic)."""
    z = z.astype(np.uint64, copy=True)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def name_hash(layer_name: str) -> int:
    """First 8 bytes of sha256 of the UTF-8 name, little-endian."""
    return int.from_bytes(hashlib.sha256(layer_name.encode("utf-8")).digest()[:8], "little")


def stream_key(seed: int, layer_name: str, stream: int) -> int:
    """The 64-bit key of one (seed, layer, stream) stream."""
    seeded = int(mix64(np.array([seed & MASK64], dtype=np.uint64))[0])
    return int(
        mix64(np.array([seeded ^ name_hash(layer_name) ^ ((stream * GAMMA) & MASK64)], dtype=np.uint64))[0]
    )


def random_bits(seed: int, layer_name: str, stream: int, count: int) -> np.ndarray:
    """`bits[0:count]` of a stream as uint64."""
    counters = np.arange(1, count + 1, dtype=np.uint64) * np.uint64(GAMMA)
    return mix64(counters + np.uint64(stream_key(seed, layer_name, stream)))


def uniform(seed: int, layer_name: str, stream: int, count: int) -> np.ndarray:
    """Uniform float64 values in [0, 1) with 53 random bits each."""
    return (random_bits(seed, layer_name, stream, count) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def signs(seed: int, layer_name: str, stream: int, count: int) -> np.ndarray:
    """+1.0 / -1.0 from the top bit."""
    top = (random_bits(seed, layer_name, stream, count) >> np.uint64(63)).astype(np.float64)
    return 1.0 - 2.0 * top


def freeze_codes(seed: int, layer_name: str, count: int, n_pruned: int, n_locked: int) -> np.ndarray:
    """uint8 codes (FREE 0, PRUNED 1, LOCKED 2) with exactly `n_pruned` pruned and `n_locked` locked."""
    if n_pruned < 0 or n_locked < 0 or n_pruned + n_locked > count:
        raise ConfigError(f"cannot freeze {n_pruned} pruned + {n_locked} locked of {count} weights")
    order = np.argsort(random_bits(seed, layer_name, FREEZE_STREAM, count), kind="stable")
    codes = np.full(count, FREE, dtype=np.uint8)
    codes[order[:n_pruned]] = PRUNED
    codes[order[n_pruned : n_pruned + n_locked]] = LOCKED
    return codes
