"""The memory service: short- and long-term memories with hybrid (dense + lexical) search."""
