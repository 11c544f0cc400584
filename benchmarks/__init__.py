"""Throughput suites: each measures the project against a baseline and a ceiling in the same run."""
