"""`selfie serve`: an HTTP API over the interpreter plus a local explorer page.

>>> from selfie_adapters.serve import Service, create_app
>>> app = create_app(Service.load("path/to/model", adapter="adapter.safetensors"))

FastAPI and uvicorn come with the ``serve`` extra: ``pip install 'selfie-adapters[serve]'``.
"""

from .limits import Limits, RequestError
from .scheduler import MAX_STEP_LOGITS, DescribeJob, Scheduler, Settings
from .service import Service

__all__ = ["MAX_STEP_LOGITS", "DescribeJob", "Limits", "RequestError", "Scheduler", "Service", "Settings",
           "create_app"]


def create_app(service: Service, *, token: str | None = None):
    """The ASGI app for ``service`` (imports FastAPI lazily); ``token`` requires ``Authorization: Bearer``."""
    from .app import build_app

    return build_app(service, token=token)
