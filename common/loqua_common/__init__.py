"""Code shared by the operator and the tutor worker: log format, rate limiter, metrics helpers."""
