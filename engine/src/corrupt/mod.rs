//! Corruptions (filled in by the corruption work).
