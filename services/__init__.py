"""sessionkit's gRPC services: one package per service, each a business layer behind thin adapters."""
