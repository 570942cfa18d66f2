//! See the list in security.rs.
