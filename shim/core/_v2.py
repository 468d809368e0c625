"""v2 wire models: what Bandwidth returns from a send and posts as callbacks.

Lenient on input (``extra="allow"``): v2 adds fields over time and shim must not break.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class V2Message(BaseModel):
    """The 202 body of ``POST /users/{accountId}/messages`` and ``message`` in callbacks."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str = Field(min_length=1)
    owner: str | None = None
    applicationId: str | None = None
    time: str | None = None
    segmentCount: int = Field(1, ge=0, le=2**31 - 1)
    direction: str = "out"
    to: list[str] = Field(default_factory=list)
    from_: str | None = Field(None, alias="from")
    text: str | None = None
    media: list[str] = Field(default_factory=list)
    tag: str | None = None


class V2Event(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    time: str | None = None
    description: str | None = None
    to: str | None = None
    errorCode: int | None = Field(None, ge=-(2**31), le=2**31 - 1)
    message: V2Message
