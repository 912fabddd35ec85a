"""The toy Llama: its config, loading the committed weights, and greedy chat answers."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from ..vectors.prompts import chat_text
from .world import World, load_world

TOY_DIR = Path(__file__).resolve().parent / "weights"
TOY_BLOCKS = 4  # decoder blocks of the toy Llama
WORLD_FILE = "world.json"


def toy_llama_config(vocab_size: int, tokenizer: PreTrainedTokenizerBase | None = None) -> LlamaConfig:
    """A ~1.2M-parameter Llama: hidden 128, 4 layers, 4 heads, MLP 512, untied embeddings.

    Untied embeddings matter: tied ones let untrained SelfIE work too well.
    """
    ids = {}
    if tokenizer is not None:
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=512, num_hidden_layers=TOY_BLOCKS,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        tie_word_embeddings=False, **ids,
    )


def load_toy_model(path: str | Path | None = None) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase, World]:
    """The trained toy model (fp32, eval mode), its tokenizer and its world.

    >>> model, tok, world = load_toy_model()
    """
    folder = Path(path) if path is not None else TOY_DIR
    if not (folder / WORLD_FILE).is_file():
        raise FileNotFoundError(f"no toy model in {folder} (expected {WORLD_FILE} there); "
                                "train one with `python -m selfie_adapters.toy.train_lm`")
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer, load_world(folder / WORLD_FILE)


def chat_prompt(tokenizer: PreTrainedTokenizerBase, question: str) -> str:
    """The chat-format prefix for one user question, ending with the assistant header."""
    return chat_text(tokenizer, question)


@torch.no_grad()
def greedy_answers(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, questions: list[str],
                   max_new_tokens: int = 32, batch_size: int = 256) -> list[str]:
    """Greedy assistant answers (text before ``<|eot_id|>``) to chat questions."""
    answers: list[str] = []
    for start in range(0, len(questions), batch_size):
        prompts = [chat_prompt(tokenizer, q) for q in questions[start:start + batch_size]]
        enc = tokenizer(prompts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]  # (B, T_new)
        answers += [tokenizer.decode(row, skip_special_tokens=True) for row in new]
    return answers
