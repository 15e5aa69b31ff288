"""byzshield: Byzantine-robust distributed training with redundant gradient placement.

ByzShield (Konstantinidis & Ramamoorthy, MLSys 2021) assigns every gradient task
("file") to r workers through an expander-like placement, majority-votes the r copies
and robustly aggregates the vote winners. See README.md for the commands.
"""

__version__ = "0.1.0"
