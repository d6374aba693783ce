"""EventExampleGen: raw camera events in, layout tf.Examples + a quarantine out."""
