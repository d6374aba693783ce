"""The LiteConverter's work: the production student as int8/float16 TFLite with metadata, the
parity gate against its float twin, latency and size measurements, the report and its plots."""
