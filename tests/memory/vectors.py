"""Vector arithmetic the retrieval tests check results with."""

from __future__ import annotations

import math

from tests.chroma_server import ChromaServer, chroma_server, free_port  # noqa: F401


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))
