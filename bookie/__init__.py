"""Bookies: the storage servers of ledgers, and the clients that talk to them.

Module map:

* ``bookie.api``          the ``BookieClient`` protocol the ledger client is written against
* ``bookie.errors``       the error hierarchy shared by every implementation
* ``bookie.storage``      the storage engine (``Bookie``, ``BookieStorageConfig``)
* ``bookie.local``        ``LocalBookieClient``: the protocol over an in-process ``Bookie``
* ``bookie.server``       ``BookieService`` over gRPC (``serve_bookie``, ``start_bookie_server``)
* ``bookie.grpc_client``  ``GrpcBookieClient``: the protocol over gRPC
* ``bookie.status_map``   the one table between bookie errors and gRPC / AddStatus codes
"""
