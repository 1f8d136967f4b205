"""The host toolkit every part of the lab shares: namespaces, processes, pid files, cleanup.

``lab`` knows nothing of PMIPv6 or of the proxy's logic; it sits right above ``proxy`` (whose
socket constants ``mcsock`` reuses) and below every other package.
"""
