"""What a worker computes."""
