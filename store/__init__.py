"""The provenance store: one schema declaration, the store interface and its backends.

Data flows hv -> pmem -> daemon -> store -> examiner: the daemon writes through this package,
the examiner reads through it, and nothing here imports either of them.
"""
