"""The SelfIE prompt: template text, injection token, and where the soft token goes."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SelfieError
from ..models.tokens import sample_chat

SELFIE_TEMPLATE = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    'What is the meaning of "<|reserved_special_token_0|>"?<|eot_id|>'
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
    'The meaning of "<|reserved_special_token_0|>" is "'
)
INJECTION_TOKEN = "<|reserved_special_token_0|>"
CLOSING_QUOTE = '"'


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt with one or more copies of an injection token; the soft token replaces each copy."""

    text: str = SELFIE_TEMPLATE
    injection_token: str = INJECTION_TOKEN
    closing: str = CLOSING_QUOTE

    def __post_init__(self) -> None:
        if self.injection_token not in self.text:
            raise SelfieError(f"template does not contain the injection token {self.injection_token!r}; "
                              f"put it where the vector should go, e.g. 'What is \"{self.injection_token}\"?'")

    def encode(self, tokenizer) -> tuple[list[int], list[int]]:
        """Token ids of the template and the positions of the injection token.

        >>> ids, sites = PromptTemplate().encode(tok)   # Llama-3: 26 ids, sites [11, 22]
        """
        token_id = injection_token_id(tokenizer, self.injection_token)
        ids = tokenizer(self.text, add_special_tokens=False)["input_ids"]
        sites = [i for i, t in enumerate(ids) if t == token_id]
        if not sites:
            raise SelfieError(f"the tokenizer splits {self.injection_token!r} into pieces; "
                              "add it as a special token or pick a token the tokenizer has")
        return list(ids), sites


def injection_token_id(tokenizer, token: str) -> int:
    """Id of a single-token string, or a clear error if the tokenizer lacks it."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == tokenizer.unk_token_id and token != tokenizer.unk_token:
        raise SelfieError(f"the tokenizer has no token {token!r}; choose an injection token from its "
                          "vocabulary (e.g. a reserved special token) with --injection-token")
    return int(tid)


# ---------------------------------------------------------------- per model family

QUESTION = 'What is the meaning of "{token}"?'
ANSWER_PREFIX = 'The meaning of "{token}" is "'
# Tried first when choosing an injection token: tokens that no prompt uses (Llama-3, Qwen, Gemma).
PREFERRED_INJECTION_TOKENS = (INJECTION_TOKEN, "<|fim_pad|>", "<unused0>", "<|reserved_special_token_1|>")
LLAMA3_MARKERS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", INJECTION_TOKEN)


def is_llama3_tokenizer(tokenizer) -> bool:
    """Does the tokenizer have the Llama-3 chat special tokens (so the published template applies)?"""
    vocab = tokenizer.get_vocab()
    return all(t in vocab for t in LLAMA3_MARKERS)


def derive_template(tokenizer, injection_token: str | None = None) -> PromptTemplate:
    """The SelfIE prompt for this tokenizer's model family.

    Llama-3 tokenizers get the published template, unchanged; any other chat model gets the same
    question and answer prefix rendered by its own chat template around ``injection_token``
    (default: :func:`pick_injection_token`).

    >>> derive_template(llama3_tokenizer).text == SELFIE_TEMPLATE
    True
    >>> derive_template(chatml_tokenizer).injection_token
    '<empty_output>'
    """
    if injection_token in (None, INJECTION_TOKEN) and is_llama3_tokenizer(tokenizer):
        return PromptTemplate()
    token = injection_token or pick_injection_token(tokenizer)
    check_whole_token(tokenizer, token)
    fix = f"give one with --template TEXT (containing {token!r}) or soft_prompt.template in the config"
    text = chat_turn(tokenizer, QUESTION.format(token=token), fix)
    return PromptTemplate(text + ANSWER_PREFIX.format(token=token), token)


LLAMA3_USER_TURN = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")


def user_turn(tokenizer, content: str) -> str:
    """One user turn + the assistant header, as the SelfIE prompt renders it: Llama-3 tokenizers in the
    published template's format (no system block), others by their own chat template.

    >>> user_turn(llama3_tokenizer, QUESTION.format(token=INJECTION_TOKEN)) + ANSWER_PREFIX.format(
    ...     token=INJECTION_TOKEN) == SELFIE_TEMPLATE
    True
    """
    if is_llama3_tokenizer(tokenizer):
        return LLAMA3_USER_TURN.format(content=content)
    return chat_turn(tokenizer, content, "use a chat model (its tokenizer needs a chat template)")


def chat_turn(tokenizer, content: str, fix: str) -> str:
    """``content`` as one user turn by the tokenizer's own chat template, with the generation prompt."""
    if not getattr(tokenizer, "chat_template", None):
        raise SelfieError(f"the tokenizer has no chat template, so no SelfIE prompt can be derived; {fix}")
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)


def pick_injection_token(tokenizer) -> str:
    """A token the tokenizer keeps whole and no chat uses: a preferred placeholder if present, else
    the last-added special token that is not BOS/EOS/PAD/UNK and not in the rendered chat template."""
    vocab = tokenizer.get_vocab()
    for token in PREFERRED_INJECTION_TOKENS:
        if token in vocab and _is_whole(tokenizer, token):
            return token
    used = {tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token}
    chat = sample_chat(tokenizer)
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    candidates = [(i, t.content) for i, t in added.items()
                  if getattr(t, "special", True) and t.content not in used and t.content not in chat]
    for _, token in sorted(candidates, reverse=True):
        if _is_whole(tokenizer, token):
            return token
    raise SelfieError("found no unused special token to carry the vector; choose one the tokenizer keeps whole "
                      "with --injection-token (or soft_prompt.reserved_token)")


def check_whole_token(tokenizer, token: str) -> None:
    """Raise unless ``token`` is one token of this tokenizer, also in running text."""
    injection_token_id(tokenizer, token)
    if not _is_whole(tokenizer, token):
        raise SelfieError(f"the tokenizer splits {token!r} into pieces in running text; choose a special token it "
                          "keeps whole (--injection-token)")


def _is_whole(tokenizer, token: str) -> bool:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return False
    return tid in tokenizer(f"x {token} y", add_special_tokens=False)["input_ids"]


def resolve_template(tokenizer, template: str | None = None, injection_token: str | None = None) -> PromptTemplate:
    """The prompt to use: ``template`` as given (its injection token defaults to the Llama-3 one), or
    the family default from :func:`derive_template`."""
    if template is None:
        return derive_template(tokenizer, injection_token)
    if injection_token is None:
        if INJECTION_TOKEN not in template:
            raise SelfieError("a custom template needs its injection token: pass --injection-token "
                              "(or soft_prompt.reserved_token) naming the token that the vector replaces")
        injection_token = INJECTION_TOKEN
    return PromptTemplate(template, injection_token)


def template_from_metadata(metadata: dict[str, str]) -> tuple[PromptTemplate | None, str | None]:
    """(prompt template, end-of-turn token) an adapter was trained with, from its file metadata
    (flat keys ``template``/``injection_token``/``eos_token``, else ``config_json``); None where unknown."""
    import json

    text, token, eos = metadata.get("template"), metadata.get("injection_token"), metadata.get("eos_token")
    if text is None and metadata.get("config_json"):
        try:
            cfg = json.loads(metadata["config_json"])
        except json.JSONDecodeError:
            cfg = {}
        cfg = cfg if isinstance(cfg, dict) else {}
        prompt = cfg.get("soft_prompt") or {}
        text, token = prompt.get("template"), prompt.get("reserved_token")
        eos = eos or (cfg.get("data") or {}).get("eos_token")
    if not isinstance(text, str) or not text:
        return None, eos
    token = token or INJECTION_TOKEN
    return (PromptTemplate(text, token) if token in text else None), eos


def choose_template(tokenizer, template: PromptTemplate | str | None = None, injection_token: str | None = None,
                    metadata: dict[str, str] | None = None) -> tuple[PromptTemplate, str | None]:
    """The one template resolver: (the prompt, the end-of-turn token the adapter was trained with or None).

    The prompt is ``template`` (a ``PromptTemplate``, or text + ``injection_token`` as
    :func:`resolve_template` reads them), else the one in the adapter's ``metadata``, else the model
    family's (:func:`derive_template`). `selfie describe`, `selfie serve` and ``Interpreter`` all use it.
    """
    trained, eos = template_from_metadata(metadata) if metadata is not None else (None, None)
    if isinstance(template, PromptTemplate):
        return template, eos
    if template or injection_token:
        return resolve_template(tokenizer, template, injection_token), eos
    return trained or derive_template(tokenizer), eos
