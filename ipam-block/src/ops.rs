//! Operator commands (show/check/release/configure/gc). Owned by h5.
