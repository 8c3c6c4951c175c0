//! The `modelc` driver: loads files, runs the pipeline stages for each command, and
//! reports diagnostics. `main.rs` only parses the command line and calls in here.

pub mod commands;
pub mod generate;
pub mod merge;
pub mod progress;
pub mod report;
pub mod train;
pub mod weights;
