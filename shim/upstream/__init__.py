"""The v2 client: shim's calls to Bandwidth's v2 messaging and media APIs."""

from .client_v2 import UpstreamClient

__all__ = ["UpstreamClient"]
