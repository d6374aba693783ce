"""LiteConverter: the student as int8 / float16 TFLite with embedded metadata, parity-checked."""
