"""Training recipes: one module (or package) per kind of fine-tuning."""
