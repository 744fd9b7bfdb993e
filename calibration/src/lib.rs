//! Camera geometry.
