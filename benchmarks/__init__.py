"""Benchmarks: forwarding goodput (Fig. 2), control-plane latency and scale, beside igmpproxy."""
