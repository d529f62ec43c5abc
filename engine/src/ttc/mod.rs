//! Test-time compute: pass@k, selection strategies, problem sets, answer checks and the
//! verifier sandbox. Generation itself is in [`crate::llm`] (feature `llm`).

pub mod answer;
pub mod passk;
pub mod problems;
pub mod sandbox;
pub mod select;
