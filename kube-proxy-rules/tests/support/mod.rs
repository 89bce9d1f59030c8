//! What the integration tests share: the bench's synthetic cluster
//! generator, compiled here from the binary's own source file (one copy; it
//! is not part of the library's API).

#[path = "../../src/bench/synthetic.rs"]
mod synthetic;

pub use synthetic::synthetic_state;
