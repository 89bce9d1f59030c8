//! placeholder: owned by a helper (see README)
