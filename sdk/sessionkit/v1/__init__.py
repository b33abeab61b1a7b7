"""Generated protobuf and gRPC stubs for the sessionkit.v1 contracts (``make protos``)."""
