"""Which devices a training process uses, set up before TensorFlow initialises its runtime.

On a machine without accelerators the CPU is split into N logical devices, so every
multi-device code path (MirroredStrategy all-reduce, DTensor sharding and collectives)
really executes; where GPUs exist the same code runs on them. Logical devices can be
configured only once per process, which is why each mesh configuration runs in its own
process.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from contract.errors import UserError


@dataclass(frozen=True)
class DeviceSetup:
    device_type: str  # "CPU" or "GPU"
    devices: tuple[str, ...]  # logical device names, e.g. /device:CPU:0

    @property
    def count(self) -> int:
        return len(self.devices)


def configure(logical_devices: int, *, gpu_memory_mb: int = 4096) -> DeviceSetup:
    """Make ``logical_devices`` devices of the best available type visible to TensorFlow.

    GPUs present: use that many GPUs, splitting each into equal logical GPUs (of
    ``gpu_memory_mb``) when more devices than GPUs are asked for. No GPUs: split the first
    CPU into ``logical_devices`` logical CPUs. If the runtime is already initialised, the
    existing devices are accepted when they already match, else a UserError says why.
    """
    if logical_devices < 1:
        raise UserError(f"--logical-devices must be >= 1, got {logical_devices}")
    gpus = tf.config.list_physical_devices("GPU")  # does not initialise the runtime
    device_type = "GPU" if gpus else "CPU"
    try:
        if gpus:
            if logical_devices <= len(gpus):
                tf.config.set_visible_devices(gpus[:logical_devices], "GPU")
            else:
                if logical_devices % len(gpus):
                    raise UserError(
                        f"--logical-devices {logical_devices} is not a multiple of the "
                        f"{len(gpus)} GPUs present"
                    )
                per_gpu = logical_devices // len(gpus)
                for gpu in gpus:
                    tf.config.set_logical_device_configuration(
                        gpu,
                        [tf.config.LogicalDeviceConfiguration(memory_limit=gpu_memory_mb)] * per_gpu,
                    )
        else:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * logical_devices
            )
    except RuntimeError:
        # Runtime already initialised: accept it if it already has enough devices.
        existing = tuple(d.name for d in tf.config.list_logical_devices(device_type))
        if len(existing) < logical_devices:
            raise UserError(
                f"this process already initialised TensorFlow with {len(existing)} {device_type} device(s); "
                f"{logical_devices} logical devices must be configured in a fresh process"
            ) from None
        return DeviceSetup(device_type=device_type, devices=existing[:logical_devices])
    # Named without listing them: listing would initialise the runtime, and
    # MultiWorkerMirroredStrategy must configure collectives before that happens.
    names = tuple(f"/device:{device_type}:{i}" for i in range(logical_devices))
    return DeviceSetup(device_type=device_type, devices=names)
