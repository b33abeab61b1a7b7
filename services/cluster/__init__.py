"""``sessionkit cluster``: the Kubernetes topology of deploy/k8s as processes on one machine (replicas of
each gRPC service on their own loopback addresses, the gateway in front, PostgreSQL and a Chroma server),
configured with the environment the manifests set."""
