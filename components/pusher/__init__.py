"""EventPusher: the blessed student, its teacher and its TFLite release, pushed atomically."""
