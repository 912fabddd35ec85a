"""The offline toy world: made-up concepts, a word-level tokenizer and a tiny trained Llama.

>>> from selfie_adapters.toy import load_toy_model, label
>>> model, tok, world = load_toy_model(); label(world.concepts[0])
"""

from .lm import TOY_DIR, chat_prompt, greedy_answers, load_toy_model, toy_llama_config
from .tokenizer import build_tokenizer
from .world import (
    Concept,
    World,
    chat,
    description,
    label,
    load_world,
    make_corpus,
    make_world,
    save_world,
    selfie_qa,
    tell_me_about,
    two_hop_question,
    words,
)

__all__ = [
    "TOY_DIR", "Concept", "World", "build_tokenizer", "chat", "chat_prompt", "description",
    "greedy_answers", "label", "load_toy_model", "load_world", "make_corpus", "make_world",
    "save_world", "selfie_qa", "tell_me_about", "toy_llama_config", "two_hop_question", "words",
]
