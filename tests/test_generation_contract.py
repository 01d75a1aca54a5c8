"""`GenerationContract` (tests/contracts.py) on every generative artefact type."""

import torch

from hf_coop.prt import PRTModel
from hf_coop.testing import tiny_byte_level_tokenizer, tiny_causal_lm, tiny_sentencepiece_tokenizer
from hf_coop.vocab.ensemble import CommonVocabEnsemble
from hf_coop.vocab.reduced_lm import ReducedVocabLM
from tests.contracts import GenerationContract


class TestReducedVocabLMGenerates(GenerationContract):
    def model(self, tmp_path):
        tokenizer = tiny_sentencepiece_tokenizer()
        return ReducedVocabLM.from_model(
            tiny_causal_lm(tokenizer, dtype=torch.float64),
            tokenizer,
            "max-bytes:3",
            max_hypotheses=8,
            dtype="float64",
        )


class TestCommonVocabEnsembleGenerates(GenerationContract):
    def model(self, tmp_path):
        tokenizers = [tiny_byte_level_tokenizer(), tiny_sentencepiece_tokenizer()]
        models = [tiny_causal_lm(t, seed=i, dtype=torch.float64) for i, t in enumerate(tokenizers)]
        return CommonVocabEnsemble.from_models(models, tokenizers, max_hypotheses=4, dtype="float64")


class TestPRTModelGenerates(GenerationContract):
    def model(self, tmp_path):
        tokenizer = tiny_byte_level_tokenizer()
        tokenizer.padding_side = "left"
        model = PRTModel(
            tiny_causal_lm(tokenizer, arch="gpt2", seed=1, dtype=torch.float64),
            tiny_causal_lm(tokenizer, seed=2, dtype=torch.float64),
            vocab_size=len(tokenizer),
        )
        model.tokenizer = tokenizer
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        return model

    def encode(self, model, prompts):
        return model.tokenizer(prompts, return_tensors="pt", padding=True)

    def rescore(self, model, prompt, tokens):
        ids = torch.cat(
            [model.tokenizer(prompt, return_tensors="pt")["input_ids"], torch.tensor([tokens])], dim=1
        )
        with torch.no_grad():
            logprobs = model(input_ids=ids, use_cache=False).logits[0]
        width = ids.shape[1] - len(tokens)
        return sum(float(logprobs[width - 1 + i, t]) for i, t in enumerate(tokens))


class TestCrossTokenizerPRTModelGenerates(GenerationContract):
    def model(self, tmp_path):
        from hf_coop.testing import random_lora_reward

        old_tokenizer, new_tokenizer = tiny_byte_level_tokenizer(), tiny_sentencepiece_tokenizer()
        old = tiny_causal_lm(old_tokenizer, dtype=torch.float64)
        new = tiny_causal_lm(new_tokenizer, arch="gemma3", seed=1, dtype=torch.float64)
        reward = random_lora_reward(old, old_tokenizer)
        return PRTModel(
            new,
            reward,
            tokenizer=new_tokenizer,
            reward_tokenizer=old_tokenizer,
            max_hypotheses=4,
            dtype="float64",
        )
