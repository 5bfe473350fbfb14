"""Assignment -> pixels: tile sources, row bands with colour transfer, and output writers."""
