"""PMIPv6 topologies: Table I link profiles, link backends, builders and cleanup."""
