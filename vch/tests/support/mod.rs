//! Helpers the tests share (also used by the end-to-end tests in `tests/`).

pub mod docker;
pub mod save_tar;
