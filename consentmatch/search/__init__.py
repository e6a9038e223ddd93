"""Search: the FAISS index over template row ids, its encrypted snapshot, and the cache that keeps it current."""
