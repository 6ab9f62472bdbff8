"""zofed: the federated layer over zokernels (seed/vote protocols, parameter server, orbits).

Grows in later releases; see the README's roadmap.
"""
