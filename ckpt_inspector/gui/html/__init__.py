"""Rich text the views show (the HTML subset of Qt), built from core results."""
