"""Retrieval building blocks shared by the memory and knowledge services: text embedders
(:mod:`.embeddings`), the vector index (:mod:`.vector_index`) and rank fusion (:mod:`.fusion`)."""
