"""Pure decision code: chunking, retry, routing, limits."""
