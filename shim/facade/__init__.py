"""The v1 facade: the legacy messages and media resources, served the way old SDKs expect.

``web_messages``, ``web_media`` and ``web_account`` (a fixed account body for SDK start-up) are the
resources, ``web_auth`` the v1 Basic check, ``web_v1`` the v1 JSON/error wire helpers.
"""

from . import web_account, web_media, web_messages, web_v2
from ._send import BATCH_LIMIT, Sender, message_path
from .web_auth import authenticate
from .web_v1 import add_user_headers, json_response, read_json, v1_error_response

__all__ = ["BATCH_LIMIT", "Sender", "add_user_headers", "authenticate", "json_response", "message_path", "read_json",
           "v1_error_response", "web_account", "web_media", "web_messages", "web_v2"]
