"""Sub-commands of ``tunnel-lb``; see :mod:`lb.cli`."""
