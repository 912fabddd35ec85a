"""Request bodies of the HTTP API (pydantic; shown on the app's OpenAPI page at /docs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["adapter", "baseline"]


CHAT = ("Render prompts with the chat template + generation prompt (as `selfie extract` and the reference do); "
        "default: yes when the model has a chat template, else raw text.")


class Strict(BaseModel):
    """Unknown fields are errors (a typo like ``scale`` for ``scales`` must not pass silently)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Sampling(Strict):
    """How descriptions are generated (the same knobs as `selfie describe`)."""

    mode: Mode | None = Field(None, description="'adapter' (default when the server has one) or 'baseline'.")
    samples: int = Field(1, ge=1, description="Descriptions per vector and scale.")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int | None = Field(None, ge=1, description="Default: the model family's (40 Llama-3, 24 "
                                       "ChatML and others).")
    seed: int = 0
    relevancy: bool = Field(False, description="Add SelfIE's per-token relevancy |p(t|patched) − p(t|unpatched)|.")

    def generation(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens,
                "seed": self.seed, "relevancy": self.relevancy}


class Generation(Sampling):
    scales: list[float] | None = Field(None, description="Soft-token scale(s); default: the mode's default.")


class VectorInput(Strict):
    """Vectors as JSON floats or base64 fp32, or the hidden state of prompt(s) at ``layer``/``position``."""

    vectors: list[list[float]] | list[float] | None = Field(None, description="One vector or a list of them.")
    vectors_b64: str | None = Field(None, description="Base64 of little-endian fp32, N × hidden_size, row-major.")
    prompt: str | list[str] | None = Field(None, description="Describe the state of this prompt (or prompts).")
    layer: int | None = Field(None, description="With prompt: layer L (state after block L). With vectors: "
                                                "subtract the server's layer-L mean vector, if it has one.")
    position: int | list[int] = Field(-1, description="With prompt: token position(s); negative counts from the "
                                      "end. Row index = prompt number × len(position) + position number.")
    chat: bool | None = Field(None, description=CHAT)


class DescribeRequest(VectorInput, Generation):
    stream: bool = Field(False, description="Stream rows as NDJSON while they are generated.")


class ExtractRequest(Strict):
    prompts: list[str] | str
    layers: list[int] | int
    positions: list[int] | int = -1
    chat: bool | None = Field(None, description=CHAT)
    encoding: Literal["list", "base64"] = "list"


class LensRequest(Sampling):
    prompt: str
    layers: list[int] | None = Field(None, description="Layers (rows); default: every layer.")
    chat: bool | None = Field(None, description=CHAT + " Columns then include its closing tokens.")
    scale: float | None = Field(None, description="One scale for every cell; default: see GET /info lens_scale.")
    stream: bool = Field(False, description="Stream the header, then cells, as NDJSON.")


class CompareRequest(Generation):
    a: VectorInput = Field(description="One vector or one prompt state.")
    b: VectorInput


class AskRequest(VectorInput, Generation):
    """Ask the vectors (or prompt states) a question, as `selfie ask` does."""

    question: str = Field(description="The question, with {vector} where the soft token goes.")
    choices: list[str] | None = Field(None, description="Score these answers (teacher-forced, normalised over "
                                      "the choices) instead of generating.")
    answer_prefix: str = Field("", description="Start of the assistant's answer (may hold {vector}).")
    stream: bool = Field(False, description="Stream rows as NDJSON while they are computed.")
