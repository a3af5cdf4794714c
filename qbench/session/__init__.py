"""One session in a worker: load, the correctness gate, the timed decode (the only timer), host probes,
provenance, quality and energy."""
