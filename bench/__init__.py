"""Benchmarks of the kit: scripts that measure speed, memory and search quality and print them."""
