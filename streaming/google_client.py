"""What the Google engines share: building an async client, and naming a failure briefly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.api_core import exceptions as google_exceptions
from google.api_core.client_options import ClientOptions

Client = TypeVar("Client")


def build_client(
    client_class: Callable[..., Client], transport_class: Callable[..., Any], endpoint: str,
    insecure: bool,
) -> Client:
    """Google's endpoint with default credentials, another endpoint, or a plaintext local one.

    Call it inside the running loop: grpc.aio channels bind to the loop that creates them.
    """
    if not endpoint:
        return client_class()
    if insecure:
        return client_class(transport=transport_class(channel=grpc.aio.insecure_channel(endpoint)))
    return client_class(client_options=ClientOptions(api_endpoint=endpoint))


def describe(exc: BaseException) -> str:
    """A failure in a few words for logs and errors: the gRPC status and Google's message."""
    if isinstance(exc, google_exceptions.GoogleAPICallError) and exc.grpc_status_code:
        return f"{exc.grpc_status_code.name}: {exc.message}"
    return str(exc) or type(exc).__name__
