//! The local lab used by `canaryd demo` and the end-to-end tests (DESIGN.md section 5).

pub mod apiserver;
