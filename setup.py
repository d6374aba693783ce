"""eventpipe: camera events in, verified production models out (TFX, TF 2.16, tf_keras)."""

from setuptools import find_packages, setup

setup(
    name="eventpipe",
    version="0.1.0",
    description="Production pipeline for image-event models on TensorFlow Extended",
    python_requires=">=3.10,<3.11",
    packages=find_packages(
        include=["contract*", "ondevice*", "simulator*", "trainer*", "serving*", "components*", "pipeline*"]
    ),
    package_data={"": ["*.json", "*.txt"]},
    # Exact versions live in requirements.lock (installed with -c); these are the direct needs.
    install_requires=[
        "tfx[kfp]==1.16.0",
        "tensorflow==2.16.2",
        "tf-keras==2.16.0",
        "apache-beam[gcp]==2.59.0",
        "tensorflow-model-optimization==0.8.1",
        "ai-edge-litert==1.4.0",
        "tflite-runtime==2.14.0",
        "tflite-support==0.4.4",
        "tensorflow-serving-api==2.16.1",
        "scikit-image",
        "tqdm",
        "matplotlib",
        "numpy",
        "pillow",
        "grpcio",
        "protobuf",
        "prometheus-client",
    ],
    extras_require={"dev": ["pytest", "ruff"]},
    entry_points={"console_scripts": ["eventpipe=pipeline.cli:main"]},
)
