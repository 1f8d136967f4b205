"""Experiments: probes, PMIPv6 signalling and handover, scenarios and the runner."""
