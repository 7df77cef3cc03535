//! Pure statistics: decides from per-request counts of stage and prod whether stage is worse
//! (roll back), proven not worse within a margin (advance), or not yet known (continue).
//! No I/O, no clock: time and data come in as arguments.

pub mod counts;

pub use counts::{ArmCounts, Bucket, LookCounts, RatioCounts};
