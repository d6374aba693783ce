"""Every gate's decision in one room (the thresholds are ``contract.config``'s): ``ingest`` (the
IngestGate), ``accuracy`` (the TFMA configs the Evaluators apply, reading their results, the same
thresholds on plain numbers) and ``release`` (the ReleaseGate's verdict, also used by benchmarks)."""
