"""`selfie serve`: the HTTP API and the explorer page (needs the ``serve`` extra)."""

from __future__ import annotations

import ipaddress
import os
import sys

import typer

from ..errors import SelfieError
from ..threads import configure_threads
from .app import app
from .checks import check_template
from .options import (
    AllowMismatchOpt,
    DeviceOpt,
    DtypeOpt,
    InjectionTokenOpt,
    InjectLayerOpt,
    TemplateOpt,
    ThreadsOpt,
)


@app.command()
def serve(
    model: str = typer.Option(..., help="Model: catalogue name (`selfie models`; 'toy' = the packaged toy "
                              "model), hub id, folder or folder/file.gguf."),
    adapter: str | None = typer.Option(None, help="Adapter file or hub reference; the baseline is always served."),
    mean_vectors: str | None = typer.Option(None, help="mean-vectors.safetensors: prompt states of layer L get "
                                            "layer_L subtracted (contrastive)."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind; loopback by default (the API exposes compute)."),
    port: int = typer.Option(8000, min=0, max=65535),
    token: str | None = typer.Option(None, envvar="SELFIE_SERVE_TOKEN",
                                     help="Require 'Authorization: Bearer TOKEN' on the API (or set "
                                          "SELFIE_SERVE_TOKEN)."),
    batch_size: int = typer.Option(128, min=1, help="Generations per micro-batch shared by concurrent requests "
                                   "(fewer when --max-step-logits binds)."),
    batch_wait_ms: float = typer.Option(5.0, min=0.0, help="How long a new request waits for others to join "
                                        "its batch."),
    max_step_logits: int | None = typer.Option(None, min=1, help="Generations × vocabulary per decode step, so "
                                               "merged batches never run slower than requests one at a time "
                                               "(default 2^24 fp32 logits = 64 MiB: 130 generations at a 128k "
                                               "vocabulary)."),
    max_vectors: int = typer.Option(1024, min=1, help="Vectors, prompts or lens cells per request."),
    max_prompt_tokens: int = typer.Option(1024, min=1, help="Tokens per prompt."),
    max_samples: int = typer.Option(64, min=1, help="Samples per vector and scale."),
    max_scales: int = typer.Option(16, min=1, help="Scales per request."),
    max_new_tokens: int = typer.Option(256, min=1, help="Largest max_new_tokens a request may ask for."),
    max_generations: int = typer.Option(16384, min=1, help="Vectors × scales × samples per request."),
    max_body_mb: float = typer.Option(256.0, min=0.001, help="Largest request body, in MiB."),
    inject_layer: InjectLayerOpt = None,
    template: TemplateOpt = None,
    injection_token: InjectionTokenOpt = None,
    allow_model_mismatch: AllowMismatchOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    log_level: str = typer.Option("info", help="uvicorn log level."),
    threads: ThreadsOpt = None,
) -> None:
    """Serve /describe, /extract, /lens, /compare, /info and the explorer page at /.

    \b
    Example: selfie serve --model toy --port 8000   (then open http://127.0.0.1:8000/)
    """
    try:
        import uvicorn

        from ..serve import MAX_STEP_LOGITS, Limits, Service, create_app
    except ImportError as e:
        raise SelfieError(f"selfie serve needs the serve extra ({e.name} is missing): "
                          "pip install 'selfie-adapters[serve]'") from None
    configure_threads(threads)
    limits = Limits(max_vectors=max_vectors, max_prompt_tokens=max_prompt_tokens, max_samples=max_samples,
                    max_scales=max_scales, max_new_tokens=max_new_tokens, max_generations=max_generations,
                    max_body_bytes=int(max_body_mb * 2**20))
    check_template(template, injection_token)
    service = Service.load(model, adapter, mean_vectors=mean_vectors, dtype=dtype, device=device,
                           template=template, injection_token=injection_token, inject_layer=inject_layer,
                           allow_model_mismatch=allow_model_mismatch, limits=limits, batch_size=batch_size,
                           batch_wait_ms=batch_wait_ms, max_step_logits=max_step_logits or MAX_STEP_LOGITS)
    if token is None and not _is_loopback(host):
        print(f"warning: serving on {host} without --token; anyone who can reach it can use this model",
              file=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    uvicorn.run(create_app(service, token=token), host=host, port=port, log_level=log_level)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
