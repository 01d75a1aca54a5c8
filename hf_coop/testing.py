"""Tiny, deterministic, offline tokenizers and models for tests, examples and benchmarks.

Everything here is built in-process in well under a second, so tests never touch a model hub. The two
tokenizer families differ the way real ones do: a GPT-2 style byte-level BPE and a Llama-2/Gemma style
SentencePiece BPE with `▁` for spaces and `<0xNN>` byte fallback.
"""

from __future__ import annotations

import gc
import json
from functools import cache

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from hf_coop.errors import ConfigError
from hf_coop.models import bundled_passage  # noqa: F401  (tests and examples take it from here too)

TINY_CORPUS_EXTRA = [
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { }",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have? Answer: 7",
    "Mr. Bennet was so odd a mixture of quick parts, sarcastic humour, reserve, and caprice.",
]

# Eight short, varied training texts (prose, code, arithmetic) for tiny fine-tuning tests.
TINY_TRAINING_TEXTS = [
    "Question: Tom has 3 apples and buys 4 more. Answer: 7",
    "def add(a, b):\n    return a + b",
    "The quick brown fox",
    "Mr. Bennet was so odd",
    "0123456789",
    "print(add(2, 3))",
    "The lazy dog sleeps all day long in the sun",
    "Answer: 12",
]

_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_corpus() -> list[str]:
    return bundled_passage().split("\n") + TINY_CORPUS_EXTRA


@cache
def _byte_level_bpe(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tiny_corpus(), trainer)
    return tok


def tiny_byte_level_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """GPT-2 style byte-level BPE (all 256 bytes as base symbols); `<|endoftext|>` is BOS, EOS and pad."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_byte_level_bpe(vocab_size).to_str()),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = _CHAT_TEMPLATE
    return tok


@cache
def _sentencepiece_bpe(vocab_size: int, byte_fallback: bool) -> str:
    """Train a Metaspace BPE on a restricted alphabet, then rebuild it with `<0xNN>` byte fallback (or, without
    it, with `<unk>` for every character outside the alphabet)."""
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)] if byte_fallback else []
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(byte_tokens),
        special_tokens=specials,
        limit_alphabet=60,  # rare characters fall back to bytes, as in Llama-2 and Gemma
        show_progress=False,
    )
    trainer_tok.train_from_iterator(tiny_corpus(), trainer)
    trained = trainer_tok.get_vocab()
    merges = [tuple(m) for m in json.loads(trainer_tok.to_str())["model"]["merges"]]
    vocab = {t: i for i, t in enumerate(specials + byte_tokens)}
    for piece, _ in sorted(trained.items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=byte_fallback))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return tok.to_str()


def tiny_sentencepiece_tokenizer(
    vocab_size: int = 480, byte_fallback: bool = True
) -> PreTrainedTokenizerFast:
    """Llama-2 style BPE: `▁` marks spaces, a prefix space is added, unknown characters use `<0xNN>` (or
    `<unk>` with `byte_fallback=False`, as older SentencePiece models do)."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_sentencepiece_bpe(vocab_size, byte_fallback)),
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    tok.add_bos_token = True
    tok.chat_template = _CHAT_TEMPLATE.replace("<|im_start|>", "<s>").replace("<|im_end|>", "</s>")
    return tok


def tiny_causal_lm(
    tokenizer: PreTrainedTokenizerFast,
    arch: str = "llama",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    extra_head_rows: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
) -> PreTrainedModel:
    """A randomly initialised causal LM for `tokenizer` (`arch` is "llama", "gpt2" or "gemma3").

    `extra_head_rows` makes the output head larger than the tokenizer, as real checkpoints often are.
    Weights are drawn with a large init range so the next-token distributions are far from uniform.
    """
    vocab_size = len(tokenizer) + extra_head_rows
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            initializer_range=0.3,
            tie_word_embeddings=False,
            **special,
        )
        model_cls = LlamaForCausalLM
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=4,
            n_positions=2048,
            initializer_range=0.3,
            **special,
        )
        model_cls = GPT2LMHeadModel
    elif arch == "gemma3":  # sliding-window and global layers, as Gemma-3; a window of 4 is soon passed
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        config = Gemma3TextConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=max(num_layers, 2),
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=hidden_size // 4,
            query_pre_attn_scalar=hidden_size // 4,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention"] * (max(num_layers, 2) // 2),
            max_position_embeddings=2048,
            initializer_range=0.3,
            tie_word_embeddings=False,
            attn_implementation="sdpa",
            **special,
        )
        model_cls = Gemma3ForCausalLM
    else:
        raise ConfigError(f"arch must be 'llama', 'gpt2' or 'gemma3', got {arch!r}")
    torch.manual_seed(seed)
    model = model_cls(config).to(dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


# --- PRT ---


def tiny_sequence_classifier(
    tokenizer: PreTrainedTokenizerFast,
    labels: tuple[str, ...] = ("negative", "positive"),
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
) -> PreTrainedModel:
    """A randomly initialised Llama sequence classifier over `labels` (names in index order)."""
    from transformers import LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.3,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(config).eval()


# --- vocabulary engine ---


@torch.no_grad()
def rescore_alone(model, inputs: dict, tokens: list[int]) -> torch.Tensor:
    """Next-token logits of an engine model (`ReducedVocabLM`, `CommonVocabEnsemble`) after one prompt
    (`inputs`: a batch of one) and after each of `tokens` in turn, with a fresh state: the oracle that a
    row of any batch must equal. Stops after an end-of-sequence token. Shape `[steps, vocab]`."""
    eos = set(model.generation_config.eos_token_id or [])
    cache = model.new_cache()
    ids = inputs["input_ids"]
    rows = [model(**inputs, cache=cache).logits[0, -1]]
    for token in tokens:
        if token in eos:
            break
        ids = torch.cat([ids, torch.tensor([[token]], device=ids.device)], dim=1)
        rows.append(model(input_ids=ids, cache=cache).logits[0, -1])
    return torch.stack(rows)


class CountForwards:
    """Counts a module's forward calls (`.calls`) while in use as a context manager: batched engines promise
    one forward per model and step, and tests hold them to it."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.calls = module, 0

    def __enter__(self) -> CountForwards:
        self.handle = self.module.register_forward_hook(self._count)
        return self

    def _count(self, *args) -> None:
        self.calls += 1

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def tail_steps(tail_bytes: torch.Tensor) -> int:
    """Steps of the engine's byte walk over the prompts' tails (`tail_bytes` of one member: one batched
    forward each at most)."""
    return int((tail_bytes >= 0).sum(-1).max())


# --- portable reward tuning ---


def random_lora_reward(base, tokenizer, seed: int = 0, reward_scale: float = 0.5, rank: int = 4):
    """A `PRTRewardModel` that is a LoRA adapter on a copy of `base` with random, non-zero weights (the shape
    `PRTTrainer` builds, without training): a reward whose steering is visible in every distribution."""
    import copy

    from peft import LoraConfig, get_peft_model

    from hf_coop.prt import PRTConfig, PRTRewardModel
    from hf_coop.prt.reward_model import reward_config_from_models

    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False
    )
    network = get_peft_model(copy.deepcopy(base), config).eval()
    return PRTRewardModel(
        network, reward_config_from_models(PRTConfig(reward_scale=reward_scale), base, tokenizer)
    )


def end_process_group() -> None:
    """Destroy the default process group at the end of a multi-process script, once its Trainer is gone.

    Call it after every object holding a DDP wrapper has gone out of scope. Left to interpreter exit, gloo's
    worker threads can still be freeing an all-gather's Python tensors and abort the process ("terminate
    called without an active exception"); destroyed while the last DDP reducer dies, the group joins those
    threads holding the GIL they wait for, and the process hangs. With the reducer gone first, the group is
    destroyed here through `torch.distributed`, which releases the GIL while it joins.
    """
    gc.collect()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
