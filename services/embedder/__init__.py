"""The embedder service: frozen encoders, pooling, token-budget batching and the LMDB cache.

Modules, one job each: `source` (model reference -> local files), `encoder` (tokenise + forward),
`pooling`, `fingerprint` (encoder identity and cache keys), `cache` (LMDB), `batching` (token
budget and the shared per-model queue), `service` (domain logic), `servicer` (protobuf), `app`
(server assembly) and `__main__` (CLI).
"""
