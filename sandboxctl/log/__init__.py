"""The tamper-evident JSONL action log: writer, reader, chain verification."""
