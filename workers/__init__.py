"""Workers: the dramatiq actors and the movers they run."""
