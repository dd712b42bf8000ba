"""Server scripts the harness runs as separate processes (never imported by tests)."""
