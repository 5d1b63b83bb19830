"""Tests of the read models (projections/), run against SQLite and PostgreSQL."""
