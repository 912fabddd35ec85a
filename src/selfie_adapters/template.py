"""The SelfIE prompt: template text, injection token, and where the soft token goes."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SelfieError

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
