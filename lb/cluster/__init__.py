"""Several ``tunnel-lb run`` replicas that behave as one load balancer (``docs/cluster.md``).

Pure parts (no I/O; the simulator runs them too): :mod:`lb.cluster.votes` (records and their
codec), :mod:`lb.cluster.members` (membership, rendezvous sharding), :mod:`lb.cluster.tally`
(votes into the health book), :mod:`lb.cluster.fingerprint` (configuration and secret
fingerprints).  The trio driver over Redis is :mod:`lb.cluster.driver`, wired into the
service by :mod:`lb.cluster.service`.
"""
