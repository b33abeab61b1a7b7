"""The knowledge service: sources split into chunks, embedded and searched with hybrid retrieval."""
