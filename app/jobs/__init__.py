"""Segmentation jobs: long work outside any HTTP request, with progress, that survives a
restart (SQLite state under SEG_JOB_DIR, inputs and results beside it)."""
