"""Special tokens in one place: which ids end a turn, pad a batch, stop a label, or are never content."""

from __future__ import annotations

from contextlib import suppress

from ..errors import SelfieError

EXTRA_EOS_TOKENS = ("<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>")


def eos_token_ids(tokenizer, model=None, trained_eos: str | None = None) -> set[int]:
    """Every id that ends an assistant turn: tokenizer/generation-config EOS plus known end tokens (and
    ``trained_eos``, the end-of-turn token an adapter was trained to emit, when the vocabulary has it)."""
    ids: set[int] = set()
    for src in (getattr(tokenizer, "eos_token_id", None),
                getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(i) for i in src)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in EXTRA_EOS_TOKENS if t in vocab)
    with suppress(SelfieError, KeyError):  # whatever this model's chat template closes a turn with
        ids.add(vocab[end_of_turn_token(tokenizer)])
    if trained_eos in vocab:
        ids.add(vocab[trained_eos])
    return ids


def pad_token_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def end_of_turn_token(tokenizer) -> str:
    """The token that closes an assistant turn, read off the chat template (e.g. ``<|eot_id|>``,
    ``<|im_end|>``, ``<end_of_turn>``); the tokenizer's EOS token when there is no chat template."""
    marker = "SELFIEANSWERMARK"
    text = sample_chat(tokenizer, marker)
    if marker in text:
        tail = text.split(marker, 1)[1]
        ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        special |= set((getattr(tokenizer, "added_tokens_decoder", {}) or {}).keys())
        for tid in ids[:2]:  # right after the answer, maybe after a separator
            if tid in special:
                return tokenizer.convert_ids_to_tokens(tid)
    if tokenizer.eos_token is None:
        raise SelfieError("cannot tell this model's end-of-turn token (no chat template, no EOS token); set "
                          "data.eos_token")
    return tokenizer.eos_token


def sample_chat(tokenizer, answer: str = "B") -> str:
    if not getattr(tokenizer, "chat_template", None):
        return ""
    try:
        chat = [{"role": "user", "content": "A"}, {"role": "assistant", "content": answer}]
        return tokenizer.apply_chat_template(chat, tokenize=False)
    except Exception:  # noqa: BLE001  (templates may reject this shape; then we know nothing from them)
        return ""


def stop_token_ids(tokenizer, closing: str = '"') -> set[int]:
    """Ids of every token whose text contains the closing quote (e.g. ``"`` and ``."``)."""
    vocab = tokenizer.get_vocab()
    ids = {i for t, i in vocab.items() if closing in t}
    byte_tok = f"<0x{ord(closing):02X}>" if len(closing) == 1 else None
    if byte_tok in vocab:
        ids.add(vocab[byte_tok])
    return ids


def special_token_ids(tokenizer, model=None) -> set[int]:
    """Ids that are never content: special/added-special tokens and every EOS id."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for tid, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(tid))
    return ids | eos_token_ids(tokenizer, model)


def describe_stop_ids(tokenizer, eos_ids: set[int], closing: str = '"', label_end: str = "last-quote") -> list[int]:
    """Where a description stops: end-of-turn, and with ``label_end="first-quote"`` any closing-quote token."""
    stops = stop_token_ids(tokenizer, closing) if label_end == "first-quote" else set()
    return sorted(stops | eos_ids)


STOP_AT = ("eos_ids", "tokenizer_eos")


def conversation_stop_ids(tokenizer, model=None, stop_at: str = "eos_ids") -> set[int]:
    """Where a written conversation stops: every end-of-turn id (``"eos_ids"``), or only the tokenizer's
    EOS id (``"tokenizer_eos"``, as the reference implementation generates)."""
    if stop_at == "tokenizer_eos" and tokenizer.eos_token_id is not None:
        return {int(tokenizer.eos_token_id)}
    return eos_token_ids(tokenizer, model)


def config_eos_ids(model) -> list[int]:
    """The EOS id(s) a model's (generation) config declares, sorted: part of its identity (see ``adapters.guard``)."""
    eos = getattr(model.config, "eos_token_id", None)
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.eos_token_id is not None:
        eos = gen.eos_token_id
    return sorted(eos) if isinstance(eos, list) else ([eos] if eos is not None else [])
