"""eventpipe's own ML Metadata artifact types."""

from tfx.types.artifact import Artifact


class Quarantine(Artifact):
    """Rejected events (JSONL: reason, detail, source, original record) and the ingest summary."""

    TYPE_NAME = "eventpipe.Quarantine"


class IngestBlessing(Artifact):
    """Present with ``blessed=1`` when ingest passed the rejection-rate and anomaly gate."""

    TYPE_NAME = "eventpipe.IngestBlessing"
