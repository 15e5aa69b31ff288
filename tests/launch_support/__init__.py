"""Helpers for the launcher tests: a real sshd on loopback addresses, a moto server,
and a tiny torchrun target. Imported as ``launch_support`` (pytest puts tests/ on
sys.path); never imported by the launcher itself."""
