"""Per-request limits of the server and the one error type its handlers turn into 4xx responses."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SelfieError


class RequestError(SelfieError):
    """Bad input to the server: answered with ``status`` and a one-line message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; larger requests get 413 (every field is a ``selfie serve`` flag)."""

    max_vectors: int = 1024  # vectors, prompts, or lens cells (layers × tokens) per request
    max_prompt_tokens: int = 1024  # tokens per prompt after the chat template
    max_samples: int = 64  # samples per vector and scale
    max_scales: int = 16
    max_new_tokens: int = 256
    max_generations: int = 16384  # vectors × scales × samples
    max_body_bytes: int = 256 * 2**20

    def check_count(self, what: str, n: int, limit: int, flag: str) -> None:
        if n > limit:
            raise RequestError(f"too many {what}: {n} > {limit} per request (server flag {flag})", 413)

    def check_generations(self, vectors: int, scales: int, samples: int) -> None:
        self.check_count("vectors", vectors, self.max_vectors, "--max-vectors")
        self.check_count("scales", scales, self.max_scales, "--max-scales")
        self.check_count("samples", samples, self.max_samples, "--max-samples")
        total = vectors * scales * samples
        self.check_count("generations (vectors × scales × samples)", total, self.max_generations,
                         "--max-generations")
