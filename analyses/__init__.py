"""Analyses written with diffana (a configuration plus the observables it registers)."""
