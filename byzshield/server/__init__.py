"""What decides the next gradient from what arrived."""
