"""Test fixtures for the package's tests and benchmarks: never imported by the library itself.

``testing.standins``: stand-in scans (the atlas template as a scanner would give it, with a known
placement) and known warps, for checking registration and regional volume measurement.
"""
