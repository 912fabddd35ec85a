"""Where vectors come from: hidden states of prompts, dataset means, SAE decoder rows, tensor files."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import SelfieError, first_line
from ..files import check_finite, iter_jsonl, load_torch, read_safetensors, resolve_file, save_tensors
from ..models.loading import base_model, check_layers, decoder_layers, left_pad, model_device, pad_token_id


class _StopForward(Exception):
    """Raised by the hook on the deepest requested block: nothing above it runs."""


NO_CHAT_FIX = "pass --raw (chat=False) or use the model's own tokenizer"


def render_chat(tokenizer, messages: list[dict], *, generation_prompt: bool = True, fix: str = NO_CHAT_FIX) -> str:
    """``messages`` rendered by the tokenizer's chat template (+ the assistant header if ``generation_prompt``)."""
    if not getattr(tokenizer, "chat_template", None):
        raise SelfieError(f"the tokenizer has no chat template; {fix}")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def chat_text(tokenizer, question: str, fix: str = NO_CHAT_FIX) -> str:
    """One user turn rendered by the tokenizer's chat template, ending with the assistant header."""
    return render_chat(tokenizer, [{"role": "user", "content": question}], fix=fix)


def render_prompts(tokenizer, prompts: Sequence[str], chat: bool = True) -> list[list[int]]:
    """Token ids per prompt; with ``chat`` through the tokenizer's chat template + generation prompt."""
    out = []
    for p in prompts:
        if chat:
            out.append(tokenizer(chat_text(tokenizer, p), add_special_tokens=False)["input_ids"])
        else:
            out.append(tokenizer(p)["input_ids"])
    if any(len(ids) == 0 for ids in out):
        raise SelfieError("a prompt tokenizes to nothing; remove empty prompts")
    return out


@torch.inference_mode()
def hidden_states_batch(model, batch: list[list[int]], layers: Sequence[int], pad_id: int) -> dict[int, torch.Tensor]:
    """Residual stream after each block in ``layers`` for left-padded ``batch``: {L: (B, T, d)}.

    Blocks above max(layers) and the LM head never run.
    """
    padded = left_pad(batch, pad_id, model_device(model))
    captured: dict[int, torch.Tensor] = {}
    blocks, last = decoder_layers(model), max(layers)

    def hook_for(layer: int):
        def hook(module, args, output):
            captured[layer] = output[0] if isinstance(output, tuple) else output
            if layer == last:
                raise _StopForward
        return hook

    handles = [blocks[L].register_forward_hook(hook_for(L)) for L in layers]
    try:
        base_model(model)(input_ids=padded.ids, attention_mask=padded.attention, position_ids=padded.positions,
                          use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return captured


def extract_hidden_states(model, tokenizer, prompts: Sequence[str], layers: int | Sequence[int], *,
                          positions: int | Sequence[int] = -1, chat: bool = True, batch_size: int = 8,
                          progress: Callable[[int], None] | None = None) -> dict[int, torch.Tensor]:
    """Residual stream after block L (= HF ``hidden_states[L + 1]``) at chosen token positions.

    Returns {L: (N, d)} fp32 for one position (default: the last token), or {L: (N, P, d)} for a
    list of positions (negative counts from the end of each prompt).

    >>> vecs = extract_hidden_states(model, tok, ["Tell me about Paris."], 19, chat=True)[19]
    """
    layers = check_layers(model, [layers] if isinstance(layers, int) else layers)
    single = isinstance(positions, int)
    pos = [positions] if single else list(positions)
    encoded = render_prompts(tokenizer, prompts, chat)
    for n, ids in enumerate(encoded):
        if any(not -len(ids) <= p < len(ids) for p in pos):
            raise SelfieError(f"prompt {n} has {len(ids)} tokens; positions {pos} do not fit it")
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths → little padding
    out = {L: torch.empty(len(encoded), len(pos), model.config.hidden_size) for L in layers}
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = [encoded[i] for i in rows]
        states = hidden_states_batch(model, batch, layers, pad_token_id(tokenizer))
        T = max(len(s) for s in batch)
        for b, (i, seq) in enumerate(zip(rows, batch)):
            cols = [T - len(seq) + (p % len(seq)) for p in pos]
            for L in layers:
                out[L][i] = states[L][b, cols].float().cpu()
        if progress is not None:
            progress(len(rows))
    return {L: (v[:, 0] if single else v) for L, v in out.items()}


def sum_hidden_states(model, tokenizer, prompts: Sequence[str], layers: int | Sequence[int], *,
                      chat: bool = True, batch_size: int = 8,
                      progress: Callable[[int], None] | None = None) -> dict[int, torch.Tensor]:
    """fp64 sums of the last-token state over prompts, streamed batch by batch: {L: (d,)}."""
    layers = [layers] if isinstance(layers, int) else list(layers)
    sums: dict[int, torch.Tensor] = {}
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        for L, v in extract_hidden_states(model, tokenizer, chunk, layers, chat=chat, batch_size=batch_size).items():
            check_finite(v, f"layer {L} hidden states")
            sums[L] = sums.get(L, torch.zeros(v.shape[-1], dtype=torch.float64)) + v.double().sum(0)
        if progress is not None:
            progress(len(chunk))
    return sums


def mean_hidden_states(model, tokenizer, prompts: Sequence[str], layers: int | Sequence[int], *,
                       chat: bool = True, batch_size: int = 8,
                       progress: Callable[[int], None] | None = None) -> dict[int, torch.Tensor]:
    """Streaming mean of the last-token state over prompts, several layers in one pass: {L: (d,)} fp32.

    Sums accumulate in fp64, so the mean does not depend on the model's dtype or the batch size.
    """
    if not prompts:
        raise SelfieError("no prompts given; the prompts file is empty")
    sums = sum_hidden_states(model, tokenizer, prompts, layers, chat=chat, batch_size=batch_size, progress=progress)
    return {L: (s / len(prompts)).float() for L, s in sums.items()}


def load_prompts(path: str | os.PathLike) -> list[str]:
    """One prompt per line (.txt) or JSONL rows with a "prompt" field (.jsonl)."""
    path = Path(path)
    if not path.is_file():
        raise SelfieError(f"prompts file not found: {path}")
    lines = [ln for ln in read_utf8(path, "prompts file").splitlines() if ln.strip()]
    if path.suffix == ".jsonl" or (lines and lines[0].lstrip().startswith("{")):
        hint = 'each line must be a JSON object with a "prompt" field holding a string'
        rows = list(iter_jsonl(lines, path.name, hint=hint))
        for n, row in rows:
            if not isinstance(row.get("prompt"), str):
                problem = "field is not a string" if "prompt" in row else "field"
                raise SelfieError(f"{path.name}:{n}: no \"prompt\" {problem}; {hint}")
        lines = [row["prompt"] for _, row in rows]
    if not lines:
        raise SelfieError(f"prompts file {path.name} is empty")
    return lines


def load_vectors(path: str | os.PathLike, key: str | None = None) -> torch.Tensor:
    """(N, d) fp32 vectors from ``.safetensors`` / ``.pt`` (weights only) / ``.npy``; ``key`` picks a tensor."""
    path = Path(path)
    if not path.is_file():
        raise SelfieError(f"vectors file not found: {path}")
    if path.suffix == ".npy":
        if key is not None:
            raise SelfieError(f"--key {key!r} does not apply to {path.name}: a .npy file holds one array")
        try:
            t = torch.from_numpy(np.load(path, allow_pickle=False))
        except (ValueError, EOFError, OSError) as e:
            raise SelfieError(f"{path.name} is not a plain numeric .npy array ({first_line(e)})") from None
    elif path.suffix in (".pt", ".pth"):
        obj = load_torch(path)
        t = _pick(obj if isinstance(obj, dict) else {"": obj}, key, path.name)
    else:
        state, _ = read_safetensors(path)
        t = _pick(state, key, path.name)
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise SelfieError(f"{path.name}: expected a float tensor of shape (N, d), got {type(t).__name__}")
    t = t.float()
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise SelfieError(f"{path.name}: expected a non-empty (N, d) or (d,) tensor, got shape {tuple(t.shape)}")
    check_finite(t, f"vectors in {path.name}")
    return t


def read_utf8(path: Path, what: str) -> str:
    """A text file's content; invalid UTF-8 is an error naming the file and the byte offset."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SelfieError(f"{what} {path.name} is not valid UTF-8 (byte {e.start}); re-save it as UTF-8") from None


def drop_zero_rows(vectors: torch.Tensor, indices: Sequence[int], what: str = "vector"
                   ) -> tuple[torch.Tensor, list[int]]:
    """Rows with a zero norm say nothing about the model: skip them with a warning; none left is an error."""
    alive = vectors.abs().amax(dim=-1) > 0 if vectors.numel() else torch.zeros(len(vectors), dtype=torch.bool)
    dead = [i for i, a in zip(indices, alive.tolist()) if not a]
    if dead:
        warnings.warn(f"skipping {len(dead)} zero {what}(s) (nothing to describe): {dead[:10]}", stacklevel=2)
    kept = [i for i, a in zip(indices, alive.tolist()) if a]
    if not kept:
        raise SelfieError(f"no {what}s left to describe: all {len(dead)} are zero")
    return vectors[alive], kept


def _pick(state: dict, key: str | None, name: str):
    if key is not None:
        if key not in state:
            raise SelfieError(f"{name} has no tensor {key!r}; keys: {sorted(state)}")
        return state[key]
    if len(state) != 1:
        raise SelfieError(f"{name} holds several tensors {sorted(state)}; pick one with --key")
    return next(iter(state.values()))


def load_mean_vectors(path: str | os.PathLike, layer: int | None = None) -> dict[int, torch.Tensor]:
    """Mean vectors → {layer: (d,) fp32}: ``mean-vectors.safetensors`` (``layer_{L}`` keys), or the
    reference's bare-tensor ``…_l{L}_mean.pt`` (layer from the file name, else ``layer``).

    >>> load_mean_vectors("wiki_l19_mean.pt")[19].shape
    torch.Size([4096])
    """
    p = resolve_file(path)
    if p.suffix in (".pt", ".pth", ".bin"):
        return means_from_torch(load_torch(p), p.name, layer)
    state, _ = read_safetensors(p)
    return _layer_means(state, p.name)


def means_from_torch(obj, name: str, layer: int | None = None) -> dict[int, torch.Tensor]:
    """A loaded ``.pt`` mean file: a bare (d,) tensor (the reference's format) or {``layer_L`` | L: (d,)}."""
    if torch.is_tensor(obj):
        vec = obj.reshape(-1) if obj.dim() == 2 and obj.shape[0] == 1 else obj
        if vec.dim() != 1:
            raise SelfieError(f"{name} holds a tensor of shape {tuple(obj.shape)}; a mean vector has shape (d,)")
        found = re.search(r"_l(\d+)(?:_mean)?\.[a-z]+$", name)
        if found is None and layer is None:
            raise SelfieError(f"{name} holds one mean vector but its name does not say the layer (the "
                              "reference names them ..._l{L}_mean.pt); pass the layer (--layer L)")
        return _layer_means({f"layer_{int(found.group(1)) if found else layer}": vec}, name)
    if isinstance(obj, dict):
        return _layer_means({k if isinstance(k, str) else f"layer_{k}": v for k, v in obj.items()}, name)
    raise SelfieError(f"{name} holds a {type(obj).__name__}; expected a mean-vector tensor or {{layer_L: tensor}}")


def _layer_means(state: dict, name: str) -> dict[int, torch.Tensor]:
    out: dict[int, torch.Tensor] = {}
    for key, t in state.items():
        if key.startswith("layer_") and key[6:].isdigit() and torch.is_tensor(t):
            check_finite(t, f"mean vector {key}")
            out[int(key[6:])] = t.float()
    if not out:
        raise SelfieError(f"{name}: no 'layer_<L>' tensors found (keys: {sorted(map(str, state))})")
    return out


def save_mean_vectors(means: dict[int, torch.Tensor], path: str | os.PathLike, **metadata: str) -> Path:
    """Write {layer: (d,)} as ``layer_{L}`` fp32 tensors (atomic)."""
    return save_tensors({f"layer_{k}": v for k, v in means.items()}, path, metadata)


def decoder_rows(W_dec: torch.Tensor, indices: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
    """Rows of an SAE decoder (d_sae, d) for ``indices``; zero-norm ("dead") latents skipped with a warning."""
    n = W_dec.shape[0]
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise SelfieError(f"feature indices {bad[:5]} out of range; the SAE has {n} latents")
    if not indices:
        raise SelfieError("no feature indices given (e.g. --features 0-99)")
    return drop_zero_rows(W_dec[list(indices)].float(), indices, "dead latent")  # (K, d)


def _import_sae_lens(what: str = "SAE features"):
    try:
        import sae_lens
    except ImportError:
        raise SelfieError(f"{what} needs sae-lens: pip install 'selfie-adapters[sae]'") from None
    return sae_lens


def load_sae(release: str, sae_id: str, device: str = "cpu"):
    """An SAE from sae-lens (``sae`` extra), e.g. ``load_sae("goodfire-llama-3.1-8b-instruct", "layer_19")``."""
    SAE = _import_sae_lens().SAE
    try:
        sae = SAE.from_pretrained(release, sae_id, device=device)
    except Exception as e:  # unknown release/id or download failure: one line
        raise SelfieError(f"could not load SAE {release}/{sae_id}: {type(e).__name__}: {e}") from None
    return sae[0] if isinstance(sae, tuple) else sae


def sae_decoder_vectors(release: str, sae_id: str, indices: Sequence[int],
                        device: str = "cpu") -> tuple[torch.Tensor, list[int]]:
    """Decoder vectors of SAE latents (dead ones skipped): ((K, d) fp32, kept indices)."""
    sae = load_sae(release, sae_id, device)
    return decoder_rows(sae.W_dec.detach(), indices)


SAE_PREFIX = "sae-lens:"


@dataclass(frozen=True)
class VectorSource:
    """Where vectors come from, in the one syntax every command takes (``describe --vectors``,
    ``eval loss --vectors``, ``data.vectors_file``, ``eval generation --sae``):
    ``FILE`` (.safetensors / .pt / .npy), ``FILE#KEY`` (one tensor of several) or
    ``sae-lens:<release>/<sae_id>`` (an SAE's decoder rows, ``sae`` extra).

    >>> VectorSource.parse("sae-lens:goodfire-llama-3.1-8b-instruct/layer_19").load([0, 5])[1]
    [0, 5]
    """

    path: str | None = None
    key: str | None = None
    sae_release: str | None = None
    sae_id: str | None = None

    @classmethod
    def parse(cls, spec: str | os.PathLike, key: str | None = None) -> VectorSource:
        """Read ``spec``; ``key`` (the old ``--key`` flag) picks the tensor when the spec names none."""
        spec = str(spec)
        if spec.startswith(SAE_PREFIX):
            release, _, sae_id = spec[len(SAE_PREFIX):].partition("/")
            if not release or not sae_id:
                raise SelfieError(f"an SAE source must be {SAE_PREFIX}<release>/<sae_id>, got {spec!r} "
                                  f"(e.g. {SAE_PREFIX}goodfire-llama-3.1-8b-instruct/layer_19)")
            return cls(sae_release=release, sae_id=sae_id)
        path, _, inline_key = (spec, "", "") if Path(spec).exists() else spec.partition("#")
        if inline_key and key and inline_key != key:
            raise SelfieError(f"{spec!r} names tensor {inline_key!r} but --key says {key!r}; give one")
        return cls(path=path, key=inline_key or key)

    @classmethod
    def sae(cls, release: str, sae_id: str | None) -> VectorSource:
        """The decoder rows of an sae-lens SAE (the old ``--sae-release R --sae-id ID`` spelling)."""
        return cls.parse(f"{SAE_PREFIX}{release}/{sae_id or ''}")

    @property
    def is_sae(self) -> bool:
        return self.sae_release is not None

    def __str__(self) -> str:
        if self.is_sae:
            return f"{SAE_PREFIX}{self.sae_release}/{self.sae_id}"
        return f"{self.path}#{self.key}" if self.key else str(self.path)

    def relative_to(self, base_dir: str | os.PathLike) -> VectorSource:
        """A relative file path taken from ``base_dir`` (where a config file lives), unless it exists as is."""
        if self.is_sae or Path(self.path).expanduser().is_absolute() or Path(self.path).exists():
            return self
        return VectorSource(path=str(Path(base_dir) / self.path), key=self.key)

    def check(self, what: str = "vectors", name: str | None = None) -> None:
        """Cheap checks before a model is loaded: the file exists, or sae-lens is installed.
        ``name``: how the file was given (before ``relative_to``), for the message."""
        if self.is_sae:
            _import_sae_lens(f"{what}={self}")
        elif not Path(self.path).expanduser().is_file():
            raise SelfieError(f"vectors file not found: {name or self.path} ({what})")

    def load(self, indices: Sequence[int] | None = None) -> tuple[torch.Tensor, list[int]]:
        """((N, d) fp32 vectors, their row indices); ``indices`` picks rows (dead SAE latents are skipped)."""
        if self.is_sae:
            W_dec = load_sae(self.sae_release, self.sae_id).W_dec.detach()  # (d_sae, d)
            if indices is None:
                return W_dec.float().cpu(), list(range(len(W_dec)))
            return decoder_rows(W_dec, indices)
        t = load_vectors(self.path, self.key)
        if indices is None:
            return t, list(range(len(t)))
        bad = [i for i in indices if not 0 <= i < len(t)]
        if bad:
            raise SelfieError(f"row indices {bad[:5]} out of range; {self.path} has {len(t)} rows")
        return t[list(indices)], list(indices)
