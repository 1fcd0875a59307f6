"""The only code that speaks SQL: SQLite (apsw) for metadata, content-addressed files for blobs."""
