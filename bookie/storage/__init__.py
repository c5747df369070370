"""The bookie's storage engine: a group-committed journal that doubles as the entry log, an
in-memory index with atomic checkpoints, torn-tail recovery and garbage collection.

Entry point: ``bookie = await Bookie.open(BookieStorageConfig(data_dir=...))``.
"""

from bookie.storage.bookie import Bookie
from bookie.storage.config import BookieStorageConfig
from bookie.storage.gc import GcReport
from bookie.storage.stats import BookieStats

__all__ = ["Bookie", "BookieStats", "BookieStorageConfig", "GcReport"]
