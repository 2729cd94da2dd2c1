"""Example applications tracked by auditdb (schema.sql and auditdb.toml each); the demo uses testplanit."""
