"""A word-level Hugging Face tokenizer for the toy world, with the Llama-3 special tokens.

Lowercase words carry their leading space (``" red"`` and ``"red"`` are two tokens), capitalised
words never do (a lone ``" "`` token precedes them), so every concept name is exactly one token
wherever it appears. ``"`` ``,`` ``.`` ``?`` and ``\\n\\n`` are tokens of their own; decoding
concatenates tokens, so ``decode(encode(text)) == text`` for any corpus text.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|pad|>", "<|unk|>",
)
PUNCTUATION = (" ", "\n\n", '"', ",", ".", "?")
# a lowercase word with its optional leading space | a capitalised word | newlines | one other char
_PIECES = r" ?[a-z]+|[A-Z][a-z]*|\n+| |[^A-Za-z\s]"

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def vocabulary(words: Iterable[str]) -> dict[str, int]:
    """Token → id: special tokens, punctuation, then each word (lowercase ones also with a space)."""
    tokens = list(SPECIAL_TOKENS) + list(PUNCTUATION)
    for word in sorted(set(words)):
        tokens.append(word)
        if word[:1].islower():
            tokens.append(" " + word)
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


def build_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A fast tokenizer over ``words`` (e.g. :func:`selfie_adapters.toy.world.words`).

    >>> tok = build_tokenizer(words(make_world())); tok.decode(tok("Tell me about Zorvak.")["input_ids"])
    """
    backend = Tokenizer(models.WordLevel(vocabulary(words), unk_token="<|unk|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(_PIECES), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    bos = "<|begin_of_text|>"
    # like Llama-3: add_special_tokens=True prepends the BOS token (the chat template already has it)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, backend.token_to_id(bos))])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos, eos_token="<|eot_id|>", pad_token="<|pad|>", unk_token="<|unk|>",
        clean_up_tokenization_spaces=False, model_max_length=256,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok
