"""The one exception hierarchy for everything a client can get wrong.

Every error that a server turns into an HTTP answer derives from ``ApiError``, which carries the HTTP status,
the offending field (``param``) and vLLM's error ``type``. The multimodal core raises its own subclasses
(``PromptError``, ``ImageError``, ``AssetError``, ``ImageGeometryError``) without knowing about HTTP bodies;
each server maps the whole family to vLLM's ``ErrorResponse`` at exactly one boundary
(``harness.server.openai.exception_response``), the way httpx maps transport errors once at its client edge.

This module sits at the bottom of the import graph: it imports nothing from the harness.
"""

from __future__ import annotations

#: vLLM's ``ErrorResponse.type`` per status (``vllm/entrypoints/openai/protocol.py``; openai-python's names).
ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    408: "RequestTimeoutError",
    409: "ConflictError",
    413: "RequestEntityTooLargeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


def error_type_for(status: int) -> str:
    return ERROR_TYPES.get(status, "BadRequestError" if status < 500 else "ServerError")


class ApiError(Exception):
    """An error that becomes an OpenAI-style JSON answer with HTTP ``status``.

    Subclasses fix a default status and ``param``; a raise site may override either.
    """

    default_status = 400
    default_param: str | None = None

    def __init__(
        self,
        status: int | None = None,
        message: str = "",
        param: str | None = None,
        err_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status if status is not None else self.default_status
        self.message = message
        self.param = param if param is not None else self.default_param
        self.err_type = err_type or error_type_for(self.status)

    def __str__(self) -> str:
        return self.message


class PromptError(ApiError):
    """A request whose messages or prompt cannot be rendered; ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(status, message, param)


class ImageError(ApiError):
    """An image part that cannot be used (bad bytes, refused source, over a limit)."""

    default_param = "messages"

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(status, message)


class AssetError(ImageError):
    """An ``mmfile://`` reference that cannot be served (malformed, missing, failed verification)."""


class ImageGeometryError(ImageError):
    """The image cannot be processed by this model family (bad aspect ratio, empty image)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 400)


class AdapterError(ApiError):
    """A LoRA adapter the workers must not be asked to load."""

    default_param = "model"

    def __init__(self, adapter: str, base: str, reason: str, status: int = 400) -> None:
        message = f"LoRA adapter {adapter!r} cannot be served on base model {base!r}: {reason}"
        err_type = "AdapterValidationError"
        if status == 404:
            # vLLM's wording for a model it does not serve, so clients that match on it keep working.
            message, err_type = f"The model `{adapter}` does not exist. ({message})", "NotFoundError"
        super().__init__(status, message, "model", err_type)
        self.adapter = adapter
        self.base = base
        self.reason = reason
