"""PMIPv6 (RFC 5213) for the lab: the Mobility Header codec, the LMA and MAG agents, their daemons.

Like ``proxy``, it is a daemon package started as processes (``python -m pmip lma|mag``);
it depends on ``proxy.events`` (one event log for every daemon), ``proxy.netlink`` (carrier)
and ``lab.mcsock`` (socket helpers), and on nothing above them.
"""
