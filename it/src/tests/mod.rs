//! The tests, one module per concern.

mod bad_input;
mod corrupt;
mod registry;
mod resume;
mod s3;
mod swarm;
