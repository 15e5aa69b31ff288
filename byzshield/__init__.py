"""byzshield: Byzantine-robust distributed training with redundant gradient placement.

ByzShield (Konstantinidis & Ramamoorthy, MLSys 2021) assigns every gradient task
("file") to r workers through an expander-like placement, majority-votes the r copies
and robustly aggregates the vote winners. See README.md for the commands.
"""

__version__ = "0.1.0"

__all__ = ["load_run", "load_sweep", "run", "runs"]


def __getattr__(name: str):
    """The notebook interface (:mod:`byzshield.api`), imported on first use so that
    ``import byzshield`` does not load torch."""
    if name in __all__:
        from byzshield import api

        return getattr(api, name)
    raise AttributeError(f"module 'byzshield' has no attribute {name!r}")
