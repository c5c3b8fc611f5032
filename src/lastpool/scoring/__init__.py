"""Scoring files of texts at scale: chunked, resumable, sharded over processes (``lastpool predict``)."""
