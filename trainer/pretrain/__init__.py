"""Self-supervised pre-training of the teacher's conv backbone (the Pretrainer)."""
