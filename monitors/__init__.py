"""Health monitors: probe drivers and pure judging of probe outcomes."""
