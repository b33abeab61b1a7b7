"""The HTTP gateway: the remote agent protocol, REST over the services, API keys and limits
(docs/GATEWAY.md). ``create_app`` builds the ASGI app; ``GatewayServer`` serves it with uvicorn."""
