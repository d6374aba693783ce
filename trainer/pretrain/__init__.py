"""Self-supervised pre-training of the teacher's conv backbone (the Pretrainer); its TFX entry
point is ``entry.run_fn``."""
