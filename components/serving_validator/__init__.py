"""ServingValidator: eventpipe's InfraValidator — the candidate must load and answer in our server."""
