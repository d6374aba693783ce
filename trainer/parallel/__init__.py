"""How the teacher trains on devices: device setup, tf.distribute and DTensor hybrid strategies,
the process launcher (multi-worker), and the communication planner."""
