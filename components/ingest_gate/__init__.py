"""IngestGate: stops the run before training when ingest or TFDV says the data is not fit."""
