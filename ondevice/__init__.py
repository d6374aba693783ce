"""The on-device path: run a ``.tflite`` event model with the TFLite interpreter and no TensorFlow.

One room for what a phone or camera does (frame decoding, the model's metadata, the
interpreter, the ``device-run`` command) and what the trainer's parity/latency checks and the
server's TFLite servable reuse, so all three run a model the same way.
"""
