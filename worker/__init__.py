"""LoRA Studio training and inference engine: pure Python, never imports Django."""
