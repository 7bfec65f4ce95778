"""Decoding that looks at the whole conversation (candidate reranking, exemplar candidates)."""
