"""Revisions of the consent schema (one file per revision)."""
