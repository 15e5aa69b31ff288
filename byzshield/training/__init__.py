"""The training loop, evaluation and run folders."""
