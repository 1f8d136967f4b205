"""pymcproxy: an IGMP/MLD proxy with instances, multiple upstreams, peering and filters."""

__version__ = "0.1.0"
