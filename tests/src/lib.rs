//! End-to-end scenarios live in `tests/`; this library only holds shared helpers.
