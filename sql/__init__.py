"""Installed SQL of auditdb: revision files (NNNN_concern.sql) and templates/ for generated SQL."""
