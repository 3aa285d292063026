"""The tensor panel: statistics and histogram, heatmap, values."""
