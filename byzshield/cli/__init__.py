"""Process plumbing shared by the command lines."""
