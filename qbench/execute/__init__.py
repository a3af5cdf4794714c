"""Running sessions: the worker process, the Ray executor, and the lock that keeps timed sessions apart."""
