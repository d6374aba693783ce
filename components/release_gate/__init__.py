"""ReleaseGate: the one decision that lets a student (and its TFLite files) be pushed."""
