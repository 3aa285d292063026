"""Where bytes come from and where they go: byte sources that readers read, staged files."""
