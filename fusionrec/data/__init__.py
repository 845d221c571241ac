"""Data stage: raw files -> a prepared dataset folder (sources, parsing, splits, tables, card, `prepare`), and a
prepared folder -> model inputs (loading, catalog, text cache, sequences, collator)."""
