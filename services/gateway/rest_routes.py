"""REST over the state, memory and knowledge services: one route per gRPC method, each converting the
HTTP request to one SDK client call and its result to the response model. No business logic here; the
routes live by service (session_routes, memory_routes, knowledge_routes), registered in this order."""

from __future__ import annotations

from fastapi import APIRouter

from sessionkit_server.gateway import knowledge_routes, memory_routes, session_routes


def add(router: APIRouter) -> None:
    session_routes.add(router)
    memory_routes.add(router)
    knowledge_routes.add(router)
