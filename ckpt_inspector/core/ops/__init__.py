"""Operations on an open checkpoint: statistics, slices, diff, export, the trusted load."""
