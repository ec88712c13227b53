"""Throughput and overhead benchmarks; each writes JSON."""
