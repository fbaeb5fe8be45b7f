"""Loaded by every Python process the tests start (``PYTHONPATH``, set by tests/conftest.py):
the same fixed-port guard as in the test process itself (see ``fixed_ports.py``)."""

import fixed_ports

fixed_ports.install()
