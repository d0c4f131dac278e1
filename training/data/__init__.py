"""Training data: synthetic aerial scenes (and, later, the MGRS-style builder and RS5M shard reader)."""
