"""tunnel-lb: a tunnel-aware load balancer engine."""

__version__ = "0.1.0"
