"""Side-by-side SMTP server benchmarks: ``python3 -m benchmarks`` (see README.md)."""
