//! See `tests/`: the end-to-end tests live there; this crate has no code of its own.
