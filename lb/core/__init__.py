"""The sans-I/O core: endpoint health, pool health and the snapshot steering reads.

Nothing here reads a clock, draws a random number on its own or does I/O: drivers pass
``now`` (trio's clock, real or virtual) and an ``rng`` in, and act on what comes back.
``tests/test_layering.py`` keeps the imports of this package to the standard library and
``lb.config``.
"""
