"""Plumbing: stages and their runner, a notebook's stage context, provenance, regression checks, bench, CLI."""
