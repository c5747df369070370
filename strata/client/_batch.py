"""The batch codec now lives in ``strata.batch_codec`` (shared with the broker's compactor);
the SDK's modules keep importing it from here."""

from __future__ import annotations

from strata.batch_codec import (
    _LZ4,
    _NONE,
    _UNSPECIFIED,
    _ZSTD,
    MAX_UNCOMPRESSED_BATCH_BYTES,
    PAYLOAD_OVERHEAD_BYTES,
    BatchBuilder,
    BatchDecodeError,
    DecodedEntry,
    _local,
    _zstd_compressor,
    _zstd_decompressor,
    acked_flags,
    bitset_words,
    compress,
    decode_entry,
    decode_message_batch,
    decompress,
    encode_batch,
    make_metadata,
)

__all__ = [
    "MAX_UNCOMPRESSED_BATCH_BYTES",
    "PAYLOAD_OVERHEAD_BYTES",
    "_LZ4",
    "_NONE",
    "_UNSPECIFIED",
    "_ZSTD",
    "BatchBuilder",
    "BatchDecodeError",
    "DecodedEntry",
    "_local",
    "_zstd_compressor",
    "_zstd_decompressor",
    "acked_flags",
    "bitset_words",
    "compress",
    "decode_entry",
    "decode_message_batch",
    "decompress",
    "encode_batch",
    "make_metadata",
]
