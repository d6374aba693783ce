"""eventpipe's own ML Metadata artifact types."""

from tfx.types.artifact import Artifact


class Quarantine(Artifact):
    """Rejected events (JSONL: reason, detail, source, original record) and the ingest summary."""

    TYPE_NAME = "eventpipe.Quarantine"


class IngestBlessing(Artifact):
    """Present with ``blessed=1`` when ingest passed the rejection-rate and anomaly gate."""

    TYPE_NAME = "eventpipe.IngestBlessing"


class LiteModels(Artifact):
    """TFLite variants of a model (int8, float16) with their parity check (``lite_report.json``)."""

    TYPE_NAME = "eventpipe.LiteModels"
