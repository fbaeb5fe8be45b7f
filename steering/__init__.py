"""Pure steering: pick a pool, then an endpoint, for one request."""
