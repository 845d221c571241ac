"""One module per raw input kind; each returns a `SourceData` (records.py) for `prepare()`."""
