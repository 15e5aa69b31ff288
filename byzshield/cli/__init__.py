"""The process plumbing of the command lines: start-up (composing and checking the
config once, one-line refusals: startup.py) and the launcher (torchrun, per-rank logs,
a sweep's status: launcher.py). Front ends only; nothing below imports it.
"""
