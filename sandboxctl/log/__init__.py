"""The tamper-evident JSONL action log: writer (append, chain, forward), files, query, verify, follow, render."""
