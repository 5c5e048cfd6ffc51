"""Routers and the features they read: CLIP embeddings, query-level routing, artifacts."""
