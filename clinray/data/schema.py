"""The canonical document record that every curation stage reads and writes.

One flat Arrow schema (no nested types: ``metadata`` is a JSON string) so that Ray Data blocks,
Parquet files and pandas views of them agree, and so that a rejects table can hold a document at any
stage together with the reason it was dropped.
"""

from __future__ import annotations

import pyarrow as pa

#: Document domains: the paper mixes clinical data with general data (SlimPajama).
DOMAINS = ("clinical", "general")

DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # unique document id (PMID, article id, file stem, ...)
        pa.field("text", pa.string(), nullable=False),  # normalized plain text
        pa.field("source", pa.string(), nullable=False),  # corpus name, e.g. "pubmed", "pmc", "slimpajama"
        pa.field("domain", pa.string(), nullable=False),  # one of DOMAINS
        pa.field(
            "format", pa.string(), nullable=False
        ),  # html | jats | medline | pdf | text | jsonl | parquet
        pa.field("metadata", pa.string()),  # JSON object: title, sections, labels, ...
        pa.field("input_file", pa.string(), nullable=False),  # provenance: the file the record came from
        pa.field("locator", pa.string()),  # provenance: record within the file (line, PMID, ...)
    ]
)

#: A dropped document or input: the record (possibly partial) plus the stage and the reason.
REJECT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("input_file", pa.string(), nullable=False),
        pa.field("locator", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),  # free text: the exception message, the duplicate's id, ...
        pa.field("text", pa.string()),  # may be truncated for huge or binary inputs
    ]
)

DOCUMENT_COLUMNS = tuple(DOCUMENT_SCHEMA.names)
REJECT_COLUMNS = tuple(REJECT_SCHEMA.names)
