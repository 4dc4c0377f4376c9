"""Medprompt retrieval: sentence embeddings, the Milvus example store, and the Ray Data index build."""
